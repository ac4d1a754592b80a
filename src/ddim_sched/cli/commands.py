"""The ``ddim-sched`` command (also ``python -m ddim_sched``): ``demo``, ``schedule`` and ``compare``.

This module runs the commands, prints, and picks the exit status; flag values are parsed and
checked by :mod:`ddim_sched.cli.flags`, and the work is done by importable functions:
:mod:`ddim_sched.demo` (the demo's sections, the schedule table and the figures) and
:mod:`ddim_sched.testing` (the parity harness behind ``compare``).

η (``--eta``) defaults to 0, deterministic DDIM, in every subcommand that takes it, as in
``DDIMScheduler.step``.

Exit status: 0 success (``compare``: MATCH, or every difference explained in ddim_sched's favour),
1 an unexplained ``compare`` difference, 2 a usage or environment error (bad flag value, missing
file, unwritable output, missing optional package, a ``compare`` option diffusers lacks), reported
as one ``ddim-sched <cmd>: error:`` line on stderr (after the subcommand's usage, for a flag it does
not know or a value it cannot parse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__, demo
from ..ddim.config import DIFFUSERS_FIELDS, DDIMConfig
from ..ddim.scheduler import DDIMScheduler
from ..demo import figures, schedule_table
from ..testing import compare_schedulers, mixture_model
from . import flags
from .flags import UsageError

PROG = "ddim-sched"
DEMO_FIGURE = "ddim-sched-demo.png"
DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")  # diffusers' DDIMScheduler has no others
DEFAULT_ETA = 0.0  # every subcommand's --eta default: deterministic DDIM, as DDIMScheduler.step
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------- output files


def _writable_file(option: str, out: str | Path) -> Path:
    """``out`` as a file path whose directory exists (created) and where a file can be created or rewritten."""
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"{option}: {str(path)!r} is a directory; pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{option}: cannot create directory {str(path.parent)!r}: {err.strerror}") from None
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option}: {str(path)!r} is not writable")
        return path
    try:  # create and remove an empty file: the only sure test that the place is writable
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        path.unlink()
    except OSError as err:
        raise UsageError(f"{option}: cannot write {str(path)!r}: {err.strerror}") from None
    return path


def _figure_path(out: str | None) -> Path:
    """--out as a .png file, or a directory to write the default figure name into; checked writable."""
    path = Path(out) if out else Path(DEMO_FIGURE)
    if path.suffix.lower() != ".png":
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out: {str(path)!r} is an existing file that is not a .png; pass a directory or .png")
        path = path / DEMO_FIGURE
    return _writable_file("--out", path)


def _write(option: str, path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as err:
        raise UsageError(f"{option}: cannot write {str(path)!r}: {err.strerror or err}") from None


# ---------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo's sections, printing each as it finishes; then write the figure."""
    device, dtype = flags.device(args.device), DTYPES[args.dtype]
    figure = None if args.no_figure else _figure_path(args.out)  # before any sampling
    print(demo.format_header(demo.DemoSettings(args.quick, args.seed, device, dtype)), flush=True)

    def show(section: Any) -> None:
        print("\n" + section.format(), flush=True)

    result = demo.run(
        args.quick,
        args.seed,
        device,
        dtype,
        progress=not args.no_progress,
        on_section=show,
        figure_dir=None if figure is None else figure.parent,
    )
    print()
    note = demo.format_divergences(result.divergences)
    if note is not None:
        print(note + "\n")
    written = []
    if figure is not None:
        if figures.matplotlib_available():
            _write("--out", figure, figures.png_bytes(figures.mixture_figure(result.sections["mixture"])))
            written.append(figure)
        else:
            print(f"figure skipped: matplotlib is not installed. To draw it: {figures.DEMO_EXTRA_HINT}")
    written += result.files
    if written:
        print("files written:\n" + "\n".join(f"  {path}" for path in written))
    print(f"total wall time: {result.wall_time:.1f} s")
    return 0


# ---------------------------------------------------------------------- schedule


def cmd_schedule(args: argparse.Namespace) -> int:
    """Print the visited timesteps with ᾱ, SNR and σ; optionally plot them."""
    config, _, _ = flags.config_from_args(args)
    plot = None
    if args.plot is not None:
        plot = _writable_file("--plot", args.plot)
        if not figures.matplotlib_available():
            raise UsageError(f"--plot needs matplotlib, which is not installed: {figures.DEMO_EXTRA_HINT}")
    scheduler = DDIMScheduler.from_config(config)
    flags.set_timesteps(scheduler, args.steps)
    rows = schedule_table.schedule_rows(scheduler, args.eta)
    if plot is not None:
        _write("--plot", plot, figures.png_bytes(figures.schedule_figure(scheduler, rows, args.eta)))
    if args.format == "json":
        print(schedule_table.format_json(scheduler, rows, args.eta))
    elif args.format == "csv":
        print(schedule_table.format_csv(rows))
    else:
        print(schedule_table.format_table(scheduler, rows, args.eta))
    if plot is not None:
        print(f"plot: {plot}", file=sys.stderr if args.format != "table" else sys.stdout)
    return 0


# ---------------------------------------------------------------------- compare


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise UsageError(
            "compare needs diffusers, which is not installed: pip install diffusers (ddim_sched matches 0.42.1)"
        ) from None
    return diffusers


def _check_diffusers_has(config: DDIMConfig, overrides: dict[str, Any], path: str | None) -> None:
    """A UsageError for a configuration that diffusers' DDIMScheduler cannot express (nothing to compare)."""
    given, lacks = [], []
    if config.timestep_spacing not in DIFFUSERS_SPACINGS:
        given.append(flags.source_text("timestep_spacing", config.timestep_spacing, overrides, path))
        lacks.append(f"{config.timestep_spacing!r} spacing (it has {', '.join(DIFFUSERS_SPACINGS)})")
    if config.snr_shift_scale != DDIMConfig().snr_shift_scale:
        given.append(flags.source_text("snr_shift_scale", config.snr_shift_scale, overrides, path))
        lacks.append("SNR shift")
    if lacks:
        raise UsageError(
            f"{', '.join(given)}: diffusers' DDIMScheduler has no {' and no '.join(lacks)}, so there is nothing "
            "to compare against (compare checks configurations both libraries can express)"
        )


def cmd_compare(args: argparse.Namespace) -> int:
    """Step ddim_sched and diffusers side by side with the exact result; print the per-step report."""
    config, data, overrides = flags.config_from_args(args)
    device, dtype = flags.device(args.device), DTYPES[args.dtype]
    _check_diffusers_has(config, overrides, args.config)
    out_path = _writable_file("--out", args.out) if args.out else None
    diffusers = _import_diffusers()
    ours = DDIMScheduler.from_config(config)
    flags.set_timesteps(ours, args.steps, device)
    header = [
        f"ddim_sched {__version__} vs diffusers {diffusers.__version__}: S={args.steps}, eta={args.eta:g}, "
        f"sample {tuple(args.shape)} {args.dtype} on {device}, seed {args.seed}"
    ]
    if config.prev_timestep_rule != DDIMConfig().prev_timestep_rule:
        header.append(
            f"note: --prev-timestep-rule {config.prev_timestep_rule!r} is a ddim_sched option diffusers lacks; "
            "diffusers steps with its stride rule (the differences that rule causes are reported as EXPLAINED)"
        )
    # diffusers reads the file's own keys plus the flags it knows; not ddim_sched's extensions.
    reference_mapping = {**data, **{k: v for k, v in overrides.items() if k in DIFFUSERS_FIELDS}}
    try:
        reference = diffusers.DDIMScheduler.from_config(reference_mapping)
    except Exception as err:  # diffusers' own validation, whatever it raises: a difference to report
        print("\n".join(header + [f"diffusers' DDIMScheduler rejects this configuration: {err}", "DIFFER"]))
        return 1
    model = mixture_model(args.shape, config.prediction_type, alpha_bar=ours, seed=args.seed)
    report = compare_schedulers(
        ours,
        reference,
        args.steps,
        args.shape,
        dtype=dtype,
        eta=args.eta,
        seed=args.seed,
        rtol=args.rtol,
        device=device,
        model=model,
        accept_explained=True,
    )
    if report.extra_reference_timesteps:
        header.append(
            f"timesteps: diffusers visits ddim_sched's {len(report.timesteps)} then {report.extra_reference_timesteps}"
        )
    elif report.timesteps:
        header.append(f"timesteps identical: {report.timesteps}")
    text = "\n".join(header + [report.format(max_rows=None)])  # its last line is the verdict
    if out_path is not None:
        record = {
            **report.to_dict(),
            "ddim_sched": __version__,
            "diffusers": diffusers.__version__,
            "config": config.to_dict(),
        }
        _write("--out", out_path, (json.dumps(record, indent=2) + "\n").encode())
        text += f"\nreport: {out_path}"
    print(text)
    return 0 if report.passed else 1


# ---------------------------------------------------------------------- parser and entry point


def _add_run_flags(parser: argparse.ArgumentParser, dtypes: list[str]) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=dtypes, default="float32", help="sample dtype (default float32)")
    parser.add_argument("--seed", type=flags.seed, default=0, help="random seed in [0, 2**32) (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ddim-sched`` and its three subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="DDIM scheduler tools: a demo (exact models and a learned digits model), a schedule inspector, "
        "and a diffusers parity check. --eta defaults to 0 (deterministic DDIM) wherever it is taken.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,schedule,compare}")
    sub.required = True

    demo_parser = sub.add_parser(
        "demo",
        help="the DDIM paper's Tables 1-2 and Figure 6 on exact models and a learned digits model (with figures)",
        description="Reproduce the DDIM paper's Tables 1 and 2 and Figure 6: on data with exact denoisers, "
        "(a) exact W2 on Gaussian data, (b) a 2-D mixture with a figure, (c) encode/decode round trips; and "
        "(d) on a small network trained here on 8x8 handwritten digits: FID per S and eta, encode/decode "
        "error, slerp interpolation, with a sample grid and an interpolation strip written next to --out.",
    )
    _add_run_flags(demo_parser, ["float32", "float64"])
    demo_parser.add_argument(
        "--out",
        metavar="PATH",
        help=f"figure path (.png) or directory (default ./{DEMO_FIGURE}); the digits figures go in the same directory",
    )
    demo_parser.add_argument("--quick", action="store_true", help="small sizes (seconds; used by the tests)")
    demo_parser.add_argument("--no-figure", action="store_true", help="print the tables only")
    demo_parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    demo_parser.set_defaults(handler=cmd_demo, parser=demo_parser)

    schedule_parser = sub.add_parser(
        "schedule",
        help="print (and plot) timesteps, alpha_bar, SNR and sigma for a config",
        description="Print the timesteps a DDIMScheduler visits with alpha_bar, SNR and sigma per step, for a "
        "config given as flags or a scheduler_config.json.",
    )
    flags.add_config_flags(schedule_parser)
    schedule_parser.add_argument("--steps", type=flags.positive_int, default=10, help="inference steps (default 10)")
    schedule_parser.add_argument(
        "--eta", type=flags.nonnegative, default=DEFAULT_ETA, help="eta of the sigma_step column (default 0)"
    )
    schedule_parser.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    schedule_parser.add_argument("--plot", metavar="PATH", help="also write a PNG plot there (needs matplotlib)")
    schedule_parser.set_defaults(handler=cmd_schedule, parser=schedule_parser)

    compare_parser = sub.add_parser(
        "compare",
        help="step ddim_sched and diffusers side by side on a config; who is closer to exact, per step",
        description="Run ddim_sched and diffusers' DDIMScheduler on the same config, start and model (the exact "
        "denoiser of a seeded Gaussian mixture) beside the exact float64 result, and report every step. Exit 0 "
        "when they match within the tolerance or every difference is a documented deliberate difference in "
        "ddim_sched's favour, 1 otherwise, 2 on a usage error (including an option diffusers lacks: "
        "the quad and karras spacings, --snr-shift-scale).",
    )
    flags.add_config_flags(compare_parser)
    compare_parser.add_argument("--steps", type=flags.positive_int, default=50, help="inference steps S (default 50)")
    compare_parser.add_argument("--eta", type=flags.nonnegative, default=DEFAULT_ETA, help="eta (default 0)")
    compare_parser.add_argument("--shape", type=flags.shape, default=(2, 4, 8, 8), help="B,C,H,W (default 2,4,8,8)")
    _add_run_flags(compare_parser, list(DTYPES))
    compare_parser.add_argument(
        "--rtol",
        type=flags.nonnegative,
        default=None,
        help="bound on each step's relative L2 error (default per dtype: ddim_sched.testing.DEFAULT_RTOL)",
    )
    compare_parser.add_argument("--out", metavar="PATH", help="also write a JSON report there")
    compare_parser.set_defaults(handler=cmd_compare, parser=compare_parser)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush cannot fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # not a real file (e.g. captured): nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 unexplained compare difference, 2 usage error)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported with the usage of the subcommand they follow, not the top level's
            after_command = argv.index(args.command) < argv.index(unknown[0])
            (args.parser if after_command else parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()
        return code
    except UsageError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        _silence_stdout()
        return 141
    except OSError as err:
        if err.errno is None or err.filename is not None:
            raise
        # Writing the output itself failed (e.g. a full disk): an environment error.
        print(f"{PROG} {args.command}: error: cannot write the output: {err.strerror}", file=sys.stderr)
        _silence_stdout()
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
