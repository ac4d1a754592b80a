"""The rest of diffusers' ConfigMixin, each checked against diffusers' own method run live on the same
input: load_config (path, file, subfolder, unused kwargs, commit hash), get_config_dict, to_json_string,
to_json_file, extract_init_dict, _get_init_keys, _get_compatibles, register_for_auto_class; and the
errors a config file raises."""

from __future__ import annotations

import errno
import json
import pathlib
import re

import diffusers
import pytest

from ddim_sched import DDIMInverseScheduler, DDIMParallelScheduler, DDIMScheduler, FlowMatchDDIMScheduler

PAIRS = [
    (DDIMScheduler, diffusers.DDIMScheduler),
    (DDIMInverseScheduler, diffusers.DDIMInverseScheduler),
    (DDIMParallelScheduler, diffusers.DDIMParallelScheduler),
    (FlowMatchDDIMScheduler, diffusers.FlowMatchEulerDiscreteScheduler),
]
IDS = [ours.__name__ for ours, _ in PAIRS]
SD15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)


def options(theirs):
    return dict(shift=3.0) if theirs is diffusers.FlowMatchEulerDiscreteScheduler else SD15


def pipeline_folder(tmp_path, theirs):
    """A saved pipeline's layout: <root>/scheduler/scheduler_config.json written by diffusers."""
    theirs(**options(theirs)).save_config(tmp_path / "scheduler")
    return tmp_path


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_from_config_of_load_config_with_a_subfolder(ours, theirs, tmp_path):
    root = pipeline_folder(tmp_path, theirs)
    loaded = ours.load_config(root, subfolder="scheduler")
    assert loaded == theirs.load_config(root, subfolder="scheduler")
    scheduler = ours.from_config(loaded)
    for key, value in options(theirs).items():
        assert scheduler.config[key] == value


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_load_config_returns_what_diffusers_returns(ours, theirs, tmp_path):
    root = pipeline_folder(tmp_path, theirs)
    file = root / "scheduler" / "scheduler_config.json"
    calls = [
        ((file,), {}),  # the file itself
        ((root / "scheduler",), {}),  # its directory
        ((str(root),), {"subfolder": "no_such_folder"}),  # diffusers falls back to the root...
        ((root / "scheduler",), {"subfolder": "no_such_folder"}),  # ... which holds the file here
        ((root,), {"subfolder": "scheduler", "return_unused_kwargs": True, "cache_dir": "x", "foo": 1}),
        ((root,), {"subfolder": "scheduler", "return_commit_hash": True}),
        ((root,), {"subfolder": "scheduler", "return_unused_kwargs": True, "return_commit_hash": True}),
    ]
    for args, kwargs in calls[:2] + calls[3:]:
        assert ours.load_config(*args, **kwargs) == theirs.load_config(*args, **kwargs), (args, kwargs)
    with pytest.raises(OSError, match="no_such_folder|scheduler_config.json"):
        ours.load_config(*calls[2][0], **calls[2][1])  # no file at the root: an OSError (diffusers' kind too)


def test_load_config_reports_the_commit_of_a_cache_snapshot(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--someone--model" / "snapshots" / commit
    DDIMScheduler(**SD15).save_pretrained(snapshot / "scheduler")
    config, found = DDIMScheduler.load_config(snapshot, subfolder="scheduler", return_commit_hash=True)
    assert found == commit and config["steps_offset"] == 1
    assert found == diffusers.DDIMScheduler.load_config(snapshot, subfolder="scheduler", return_commit_hash=True)[1]


def test_get_config_dict_is_the_deprecated_load_config(tmp_path):
    DDIMScheduler(**SD15).save_pretrained(tmp_path)
    with pytest.warns(FutureWarning, match="load_config"):
        assert DDIMScheduler.get_config_dict(tmp_path) == DDIMScheduler.load_config(tmp_path)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS[:3], ids=IDS[:3])
def test_to_json_string_and_file_write_what_diffusers_writes(ours, theirs, tmp_path):
    config = dict(SD15, timestep_spacing="trailing", trained_betas=[0.01, 0.02, 0.5], num_train_timesteps=3)
    mine, reference = ours(**config), theirs(**config)
    assert mine.to_json_string() == reference.to_json_string()
    mine.to_json_file(tmp_path / "ours.json")
    reference.to_json_file(tmp_path / "theirs.json")
    assert (tmp_path / "ours.json").read_text() == (tmp_path / "theirs.json").read_text()
    loaded = theirs.from_config(theirs.load_config(tmp_path / "ours.json")).config
    assert loaded == {k: v for k, v in reference.config.items() if k != "_use_default_values"}


def test_flow_to_json_string_writes_what_diffusers_writes():
    mine, reference = FlowMatchDDIMScheduler(shift=3.0), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours, theirs = json.loads(mine.to_json_string()), json.loads(reference.to_json_string())
    assert ours.pop("_class_name") == "FlowMatchDDIMScheduler"
    assert theirs.pop("_class_name") == "FlowMatchEulerDiscreteScheduler"
    assert ours == theirs


def test_register_for_auto_class_adds_the_auto_map_as_diffusers_does():
    class Mine(DDIMScheduler):
        pass

    class Theirs(diffusers.DDIMScheduler):
        pass

    for cls in (Mine, Theirs):
        cls.register_for_auto_class()
    ours, theirs = json.loads(Mine().to_json_string()), json.loads(Theirs().to_json_string())
    assert ours["auto_map"] == {"AutoModel": f"{Mine.__module__.split('.')[-1]}.Mine"}
    assert theirs["auto_map"] == {"AutoModel": f"{Theirs.__module__.split('.')[-1]}.Theirs"}
    assert DDIMScheduler._auto_class is None and "auto_map" not in DDIMScheduler().to_json_string()
    with pytest.raises(ValueError, match="AutoModel"):
        Mine.register_for_auto_class("AutoPipeline")


CONFIGS = {
    "sd15 PNDM": (
        diffusers.PNDMScheduler(
            skip_prk_steps=True, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
        ).config,
        {},
    ),
    "ddim, an unknown key": ({**diffusers.DDIMScheduler().config, "not_an_option": 3}, {}),
    "overrides": (diffusers.DDIMScheduler().config, {"timestep_spacing": "trailing", "foo": 1}),
    "defaults listed": (
        {**diffusers.DDIMScheduler(steps_offset=1).config, "_use_default_values": ["steps_offset"]},
        {},
    ),
    "euler karras": (diffusers.EulerDiscreteScheduler(use_karras_sigmas=True).config, {}),
    "a flow config": (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, {}),
}


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_extract_init_dict_splits_as_diffusers_does(ours, theirs, case):
    config, kwargs = CONFIGS[case]
    init, unused, hidden = ours.extract_init_dict(dict(config), **dict(kwargs))
    their_init, their_unused, their_hidden = theirs.extract_init_dict(dict(config), **dict(kwargs))
    # Deliberate: ddim_sched's inverse scheduler also takes the forward scheduler's options (thresholding,
    # ...: diffusers' takes a subset), and every class takes its extension options; those move from
    # "unused" to the constructor's arguments. Everything else is split as diffusers splits it.
    extra = {k: v for k, v in init.items() if k not in their_init}
    assert set(extra) <= set(ours.config_class.field_names()) - set(theirs._get_init_keys(theirs))
    assert {k: v for k, v in init.items() if k in their_init} == their_init
    assert unused == {k: v for k, v in their_unused.items() if k not in extra}
    assert hidden == {k: v for k, v in their_hidden.items() if k not in extra}
    if ours is not DDIMInverseScheduler:
        assert extra == {}


def test_init_keys_and_compatibles_are_diffusers_plus_the_extensions():
    for ours, theirs in PAIRS:
        mine, their_keys = ours._get_init_keys(ours), theirs._get_init_keys(theirs)
        assert their_keys - {"kwargs"} <= mine and mine - their_keys - {"kwargs"} <= set(
            ours.config_class.field_names()
        )
        assert {c.__name__ for c in ours._get_compatibles()} == {c.__name__ for c in theirs._get_compatibles()}
        assert ours._compatibles == theirs._compatibles or ours is FlowMatchDDIMScheduler
    assert DDIMScheduler._dict_from_json_file.__self__ is DDIMScheduler


# --------------------------------------------------------------------------------------- errors


def test_an_unreadable_config_file_raises_the_oserror_naming_the_path(tmp_path, monkeypatch):
    DDIMScheduler().save_pretrained(tmp_path)
    file = tmp_path / "scheduler_config.json"
    read_bytes = pathlib.Path.read_bytes

    def denied(path):
        if path == file:  # as open() fails for a file without read permission (chmod 000, not root)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    for load in (DDIMScheduler.from_pretrained, DDIMScheduler.load_config, DDIMScheduler._dict_from_json_file):
        with pytest.raises(PermissionError, match=re.escape(str(file))) as info:
            load(file)
        assert not isinstance(info.value, ValueError) and info.value.filename == str(file)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe{}", b"[1, 2]"])
def test_a_config_file_that_is_not_a_json_object_stays_a_value_error(tmp_path, content):
    (tmp_path / "scheduler_config.json").write_bytes(content)
    for load in (DDIMScheduler.from_pretrained, DDIMScheduler.load_config):
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "scheduler_config.json"))):
            load(tmp_path)
