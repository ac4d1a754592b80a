"""The docs cannot rot: every ```python block in docs/*.md and README.md runs, every relative link
resolves, every public name has a docstring and an entry in docs/api.md, and docs/numerics.md
mirrors tests/tolerances.py.

A block that must not run here (network, GPU) is preceded by an HTML comment on the line before
its fence — blank lines in between are allowed:

    <!-- skip: downloads model weights and needs a GPU -->
    ```python
    ...
    ```
"""

from __future__ import annotations

import doctest
import functools
import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import ddim_sched
from ddim_sched import testing as ddim_testing
from tests.tiny_models import single_thread
from tests.tolerances import EXACT_RTOL, PARITY_RTOL

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]

# Pages other changes add; index.md links to them before they land. Tolerated only while absent.
PENDING_PAGES = {"performance.md", "beyond.md", "demo.md"}


FENCE_OPEN = re.compile(r"^(?P<indent>\s*)```python\s*$")
FENCE_CLOSE = re.compile(r"^\s*```\s*$")
SKIP_MARKER = re.compile(r"^\s*<!--\s*skip:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One ```python block: where it starts (1-based line of its first code line), its code, and the
    reason it is skipped (None: it runs)."""

    path: Path
    line: int
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _dedent(line: str, indent: int) -> str:
    """Remove up to ``indent`` leading spaces (the fence's indentation inside a list item)."""
    return line[min(indent, len(line) - len(line.lstrip(" "))) :]


def python_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The ```python blocks of a Markdown file, dedented, with their skip markers."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opened = FENCE_OPEN.match(lines[i])
        if not opened:
            i += 1
            continue
        indent = len(opened["indent"])
        end = i + 1
        while end < len(lines) and not FENCE_CLOSE.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: unclosed ```python block")
        code = "\n".join(_dedent(line, indent) for line in lines[i + 1 : end])
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP_MARKER.match(before)
        blocks.append(Block(path, i + 2, code + "\n", marker["reason"] if marker else None))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in DOC_FILES for block in python_blocks(path)]


BLOCKS = all_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_code_block_runs(block, tmp_path, monkeypatch):
    if block.skip is not None:
        pytest.skip(block.skip)
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    with single_thread():
        exec(compile(block.code, block.id, "exec"), {"__name__": f"docs_block_{block.line}"})


def test_every_docs_page_has_runnable_blocks():
    runnable = {b.path.name for b in BLOCKS if b.skip is None}
    for page in ("quickstart.md", "migration.md", "concepts.md", "numerics.md"):
        assert page in runnable, page


def test_block_extractor():
    text = """text
```python
a = 1
```
<!-- skip: needs a GPU -->

```python
b = 2
```
```bash
echo no
```
- item
  ```python
  if c:
      c = 3
  ```
"""
    blocks = python_blocks(ROOT / "x.md", text)
    assert [(b.line, b.code, b.skip) for b in blocks] == [
        (3, "a = 1\n", None),
        (8, "b = 2\n", "needs a GPU"),
        (15, "if c:\n    c = 3\n", None),
    ]
    with pytest.raises(ValueError, match="unclosed"):
        python_blocks(ROOT / "x.md", "```python\nx = 1\n")


def test_a_failing_block_fails():
    block = python_blocks(ROOT / "x.md", "```python\nassert 1 == 2\n```\n")[0]
    with pytest.raises(AssertionError):
        exec(compile(block.code, block.id, "exec"), {})


# ---------------------------------------------------------------------------- links

LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCED = re.compile(r"^\s*```.*?^\s*```\s*$", re.S | re.M)


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub generates for a Markdown file's headings."""
    anchors, seen = set(), {}
    text = FENCED.sub("", path.read_text(encoding="utf-8"))
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    text = FENCED.sub("", path.read_text(encoding="utf-8"))
    return [m["target"] for m in LINK.finditer(text) if not re.match(r"^[a-z][a-z+.-]*:", m["target"])]


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_relative_links_resolve(page):
    problems = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            if destination.parent == DOCS and destination.name in PENDING_PAGES:
                continue
            problems.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in github_anchors(destination):
            problems.append(f"{target}: no heading with anchor #{anchor}")
    assert not problems, f"{page.name}: " + "; ".join(problems)


def test_anchor_slugs_follow_github():
    page = DOCS / "migration.md"
    assert "zero-terminal-snr-with-epsilon-prediction-is-an-error" in github_anchors(page)
    assert "add_noise-and-get_velocity-do-not-modify-the-scheduler" in github_anchors(page)


def test_index_links_every_page():
    linked = {t.partition("#")[0] for t in relative_links(DOCS / "index.md")}
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= linked, pages - linked
    assert PENDING_PAGES <= linked


# ---------------------------------------------------------------------------- API reference


def _defined_in(module) -> list[tuple[str, object]]:
    """Public functions and classes defined in a module (not imported into it)."""
    return [
        (name, obj)
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def _members(cls) -> list[tuple[str, object]]:
    """Public methods and properties a class has from ddim_sched's own classes (itself and its bases)."""
    out, seen = [], set()
    for owner in cls.__mro__:
        if not owner.__module__.startswith("ddim_sched"):
            continue
        for name, obj in vars(owner).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(obj, (classmethod, staticmethod)):
                obj = obj.__func__
            if isinstance(obj, functools.cached_property):
                obj = obj.func
            if inspect.isfunction(obj) or isinstance(obj, property):
                out.append((name, obj))
    return out


def public_api() -> list[tuple[str, str, object]]:
    """(qualified name, short name, object) for every public name."""
    api = []
    for name in ddim_sched.__all__:
        obj = getattr(ddim_sched, name)
        api.append((f"ddim_sched.{name}", name, obj))
        if inspect.ismodule(obj):
            api += [(f"{obj.__name__}.{n}", n, o) for n, o in _defined_in(obj)]
    api.append(("ddim_sched.testing", "testing", ddim_testing))
    api += [(f"ddim_sched.testing.{n}", n, getattr(ddim_testing, n)) for n in ddim_testing.__all__]
    classes = (
        ddim_sched.DDIMScheduler,
        ddim_sched.DDIMConfig,
        ddim_sched.DDIMSchedulerOutput,
        ddim_testing.MatchReport,
    )
    for cls in classes:
        api += [(f"{cls.__name__}.{n}", n, o) for n, o in _members(cls)]
    return api


def own_docstring(obj) -> str:
    """The object's own docstring: not inherited, and not dataclasses' generated signature."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        return "" if doc.startswith(f"{obj.__name__}(") else doc.strip()
    return (obj.__doc__ or "").strip()


def undocumented(api) -> list[str]:
    return [qualified for qualified, _, obj in api if not own_docstring(obj)]


def test_every_public_name_has_a_docstring():
    assert undocumented(public_api()) == []


def test_docstring_check_catches_a_missing_docstring():
    def helper():
        pass

    @dataclass
    class Record:
        x: int

    assert undocumented([("helper", "helper", helper), ("Record", "Record", Record)]) == ["helper", "Record"]


def test_every_public_name_is_in_the_api_reference():
    text = (DOCS / "api.md").read_text(encoding="utf-8")

    def mentioned(name: str) -> bool:
        # `name`, `name(...)`, `name[...]`, `Class.name`, `module.name ...` all count.
        return re.search(r"`(?:[\w.]*\.)?" + re.escape(name) + r"[`(\[ ]", text) is not None

    missing = [qualified for qualified, name, _ in public_api() if not mentioned(name)]
    assert missing == [], f"docs/api.md does not mention: {', '.join(missing)}"


def test_public_api_covers_the_scheduler_interface():
    names = {qualified for qualified, _, _ in public_api()}
    for member in ("step", "set_timesteps", "from_config", "add_noise", "config", "step_index"):
        assert f"DDIMScheduler.{member}" in names


# ---------------------------------------------------------------------------- numerics page


def test_numerics_tolerance_table_mirrors_the_test_table():
    text = (DOCS / "numerics.md").read_text(encoding="utf-8")
    section = text.split("## Tolerances", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and hasattr(torch, cells[0]) and isinstance(getattr(torch, cells[0]), torch.dtype):
            rows[getattr(torch, cells[0])] = (float(cells[1]), float(cells[2]))
    assert rows == {dtype: (PARITY_RTOL[dtype], EXACT_RTOL[dtype]) for dtype in PARITY_RTOL}


# ---------------------------------------------------------------------------- doctests in src


def test_docstring_examples_run():
    attempted = 0
    for info in pkgutil.walk_packages(ddim_sched.__path__, "ddim_sched."):
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, info.name
        attempted += result.attempted
    result = doctest.testmod(ddim_sched)
    assert result.failed == 0
    assert attempted + result.attempted >= 5
