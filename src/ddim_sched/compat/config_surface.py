"""diffusers' configuration surface, shared by every ddim_sched scheduler: ``config``, ``from_config``,
``from_pretrained``, ``save_pretrained``, ``register_to_config`` and the metadata keys diffusers' own
schedulers carry, so that pipelines and diffusers' own tests treat these classes as theirs.

The rules follow diffusers' ``ConfigMixin`` (0.42.1), written here from its documented behaviour:

* ``config`` is a dict with attribute access (``FrozenDict``). It holds the config's fields as diffusers' class
  names them; ddim_sched's extension fields appear only when they differ from their defaults (so that
  diffusers accepts the config silently) and are readable as ``config.name`` / ``config["name"]`` always.
  After the fields come the metadata keys: ``_use_default_values`` (the fields the constructor was not
  given), ``_class_name`` and ``_diffusers_version``, and any key added with ``register_to_config``.
* ``from_config`` takes the fields it knows, drops the keys listed in ``_use_default_values`` (their
  defaults apply), keeps other keys in the config (a scheduler switched back to another class then
  finds its own options), and warns once, naming them, about keys that are neither fields, metadata,
  nor options of a DDIM-compatible diffusers scheduler (e.g. PNDM's ``skip_prk_steps`` loads silently).
* Reading a config value as an attribute of the scheduler works, with a FutureWarning, as in diffusers.
* ``config`` is one object per scheduler, and writes to it are allowed, as in diffusers
  (``scheduler.config.timestep_spacing = "leading"``, which LEDITS++ does): a field is validated and
  changes the scheduler exactly as ``register_to_config`` does; any other key is stored.
* ``load_config``, ``extract_init_dict``, ``to_json_string``, ``to_json_file`` and their helpers behave as
  diffusers' (local files only: nothing is downloaded).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

from .config_io import (
    CONFIG_NAME,
    DIFFUSERS_FORMAT_VERSION,
    commit_hash,
    config_json,
    config_path,
    read_config,
    read_config_file,
    write_config,
    write_text,
)
from .scheduler_mixin import DIFFUSERS_INTEGRATION

logger = logging.getLogger("ddim_sched")

# The schedulers diffusers treats as interchangeable with DDIM (its ``KarrasDiffusionSchedulers``).
KARRAS_COMPATIBLE: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)
# Constructor options of those schedulers (diffusers 0.42.1) that DDIM does not have: a config that
# carries them (e.g. Stable Diffusion's PNDM config) loads without a warning, as in diffusers.
COMPATIBLE_KEYS: frozenset[str] = frozenset(
    {
        "algorithm_type", "disable_corrector", "euler_at_final", "final_sigmas_type", "flow_shift",
        "interpolation_type", "lambda_min_clipped", "lower_order_final", "predict_x0", "rho", "shift_terminal",
        "sigma_data", "sigma_max", "sigma_min", "sigma_schedule", "skip_prk_steps", "solver_order", "solver_p",
        "solver_type", "time_shift_type", "timestep_type", "use_beta_sigmas", "use_dynamic_shifting",
        "use_exponential_sigmas", "use_flow_sigmas", "use_karras_sigmas", "use_lu_lambdas", "variance_type",
    }
)  # fmt: skip
# Options of diffusers' from_pretrained that concern downloading: accepted and ignored (files are local).
HUB_KWARGS: frozenset[str] = frozenset(
    {
        "cache_dir", "force_download", "resume_download", "proxies", "output_loading_info", "local_files_only",
        "token", "use_auth_token", "revision", "user_agent", "return_commit_hash", "mirror", "dduf_entries",
        "_from_pipeline", "_from_auto",
    }
)  # fmt: skip
# The keyword arguments diffusers' load_config takes (for downloading, and subfolder): accepted, and ignored
# but subfolder (files are local); any other keyword argument is returned as unused.
LOAD_CONFIG_KWARGS: frozenset[str] = frozenset(
    {
        "cache_dir", "local_dir", "local_dir_use_symlinks", "force_download", "proxies", "token",
        "local_files_only", "revision", "mirror", "subfolder", "user_agent",
    }
)  # fmt: skip
_USE_DEFAULTS = "_use_default_values"
# Keys a saved config leaves out, as diffusers' to_json_string does.
_NOT_SAVED: tuple[str, ...] = (_USE_DEFAULTS, "_ignore_files", "_pre_quantization_dtype")


class FrozenDict(dict[str, Any]):
    """The configuration as a dict with attribute access, like diffusers' ``FrozenDict``: one object per
    scheduler (``scheduler.config is scheduler.config``), kept current as the scheduler changes.

    Keys in ``hidden`` (extension fields at their defaults) are not among the keys but can be read (as
    ``config.name``, ``config["name"]`` or ``config.get("name")``).

    Writes are allowed as diffusers allows them: ``config.name = value`` and ``config["name"] = value`` change
    the scheduler as ``scheduler.register_to_config(name=value)`` does (a field is validated: a bad value
    raises ValueError / TypeError naming it, and the config is left as it was). ``del``, ``pop``,
    ``popitem``, ``setdefault``, ``update`` and ``clear`` raise TypeError (diffusers refuses them too). A copy
    (``copy.copy``, pickle) is a plain detached dict of the same class: writing to it changes only it.
    """

    _hidden: dict[str, Any]
    _owner: Any

    def __init__(
        self, items: Mapping[str, Any] | None = None, hidden: Mapping[str, Any] | None = None, owner: Any = None
    ) -> None:
        super().__init__(items or {})
        object.__setattr__(self, "_hidden", dict(hidden or {}))
        object.__setattr__(self, "_owner", owner)

    def __missing__(self, key: str) -> Any:
        if key in self._hidden:
            return self._hidden[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """``config[key]`` (hidden extension fields included), else ``default``."""
        if key in self:
            return dict.__getitem__(self, key)
        return self._hidden.get(key, default)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no field {name!r}") from None

    def __setitem__(self, key: str, value: Any) -> None:
        owner = self._owner
        if owner is None:
            dict.__setitem__(self, key, value)
        else:
            owner._write_config(key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "a scheduler config's keys cannot be removed or updated in bulk; change one with config.name = value "
            "(or scheduler.register_to_config(name=value)), or build a new scheduler with "
            "from_config(config, **changes)"
        )

    __delitem__ = __delattr__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def _refresh(self, items: Mapping[str, Any], hidden: Mapping[str, Any]) -> None:
        """Show ``items`` (in their order) and ``hidden``; readers never see a key go missing that stays."""
        if list(self) != list(items):
            dict.clear(self)
        dict.update(self, items)
        object.__setattr__(self, "_hidden", dict(hidden))

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any], dict[str, Any]]]:
        return (type(self), (dict(self), dict(self._hidden)))


def _as_mapping(config: Any) -> Mapping[str, Any]:
    """A config given as a mapping, a config dataclass (``to_dict``) or an object with a ``config``."""
    if isinstance(config, Mapping):
        return config
    if hasattr(config, "to_dict") and hasattr(type(config), "field_names"):
        return config.to_dict()
    if isinstance(getattr(config, "config", None), Mapping):
        return config.config
    raise TypeError(f"config must be a mapping, a config dataclass or a scheduler; got {type(config).__name__}")


# Per class: its _compatible_keys (found once).
_COMPATIBLE_KEYS: dict[type, set[str]] = {}


def _diffusers_class(name: Any) -> type | None:
    """diffusers' class of that name when ddim_sched derives from diffusers (else None)."""
    if not isinstance(name, str) or not DIFFUSERS_INTEGRATION.startswith("on"):
        return None
    found = getattr(importlib.import_module("diffusers"), name, None)
    return found if isinstance(found, type) else None


class ConfigSurface:
    """The config surface of a scheduler whose options live in a frozen dataclass (``config_class``).

    Subclasses set ``config_class`` (with ``field_names()``, ``visible_fields``, ``to_dict()`` and
    ``replace()``) and implement ``_set_config(config)``, which installs a validated config; every change
    goes through :meth:`_install_config`, which also keeps ``config`` current.
    """

    config_class: ClassVar[Any]
    config_name: ClassVar[str] = CONFIG_NAME
    _compatibles: ClassVar[list[str]] = list(KARRAS_COMPATIBLE)
    _deprecated_kwargs: ClassVar[list[str]] = []
    ignore_for_config: ClassVar[list[str]] = []
    has_compatibles: ClassVar[bool] = True
    # Keys a subclass explains in a warning of its own after loading (left out of the generic one).
    _explained_keys: ClassVar[frozenset[str]] = frozenset()
    _auto_class: ClassVar[str | None] = None

    _config: Any
    _extras: dict[str, Any]
    _extras_version: int

    def _set_config(self, config: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        # (trained_betas, a table of T values, is left out)
        fields = ", ".join(f"{k}={v!r}" for k, v in self._config.to_dict().items() if k != "trained_betas")
        return f"{type(self).__name__}({fields})"

    @classmethod
    def _visible_fields(cls) -> tuple[str, ...]:
        """The fields the config shows even at their defaults: the class's own ``visible_fields`` where it sets
        them (the inverse scheduler shows diffusers' inverse subset), else its config class's."""
        return getattr(cls, "visible_fields", cls.config_class.visible_fields)

    def _init_config(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Construct the config from the constructor's arguments; note the fields left at their defaults."""
        fields = self.config_class.field_names()
        private = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("_")}
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(fields)} positional arguments; got {len(args)}")
        given = set(fields[: len(args)]) | set(kwargs)
        defaults = [f for f in self._visible_fields() if f not in given]
        self._extras = {_USE_DEFAULTS: defaults} if defaults else {}
        self._extras.update(private)
        self._extras_version = 0
        self._install_config(self.config_class(*args, **kwargs))

    # ------------------------------------------------------------------ reading

    def _config_items(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(shown, hidden): the config's keys in diffusers' order, and the extension fields at their defaults."""
        values = self._config.to_dict()
        visible = self._visible_fields()
        defaults = self.config_class.defaults()
        shown = {k: v for k, v in values.items() if k in visible or v != defaults[k]}
        hidden = {k: v for k, v in values.items() if k not in shown}
        metadata = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_FORMAT_VERSION}
        return {**shown, **metadata, **self._extras, "_class_name": type(self).__name__}, hidden

    @property
    def config(self) -> FrozenDict:
        """The configuration as a dict with attribute access (diffusers' ``FrozenDict``): the same object on
        every read, current after every change; writing to it changes the scheduler (see :class:`FrozenDict`)."""
        view = self.__dict__.get("_config_view")
        if view is None or view._owner is not self:  # (a copied scheduler holds its original's detached view)
            view = self.__dict__["_config_view"] = FrozenDict(owner=self)
            object.__setattr__(view, "_source", None)
        source = view._source
        if source is None or source[0] is not self._config or source[1] != self._extras_version:
            self._refresh_config()
        return view

    def _refresh_config(self) -> None:
        """Bring ``config`` (if it was read) up to date with the configuration and the extra keys."""
        view = self.__dict__.get("_config_view")
        if view is not None and view._owner is self:
            view._refresh(*self._config_items())
            object.__setattr__(view, "_source", (self._config, self._extras_version))

    def __getattr__(self, name: str) -> Any:
        # Called only for names that are not attributes: a config value, read as diffusers allows.
        state = self.__dict__
        if not name.startswith("__") and "_config" in state:
            config = self.config
            if name in config or name in config._hidden:
                warnings.warn(
                    f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object attribute is "
                    f"deprecated. Please access '{name}' over '{type(self).__name__}'s config object instead, e.g. "
                    f"'scheduler.config.{name}'.",
                    FutureWarning,
                    stacklevel=2,
                )
                return config[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    # ------------------------------------------------------------------ changing

    def _install_config(self, config: Any) -> None:
        """Make a validated config current (``_set_config``) and show it in ``config``."""
        self._set_config(config)
        self._refresh_config()

    def _update_extras(self, extras: Mapping[str, Any], replace: bool = False) -> None:
        """Store keys that are not fields (all of them anew with ``replace``) and show them in ``config``."""
        self._extras = dict(extras) if replace else {**self._extras, **extras}
        self._extras_version += 1
        self._refresh_config()

    def register_to_config(self, **kwargs: Any) -> None:
        """Add or change config entries, as diffusers' ``register_to_config``: a field changes the scheduler
        (validated) with the effect it has in diffusers, any other key is stored. A changed field is no
        longer listed in ``_use_default_values``, so that ``from_config(scheduler.config)`` keeps it.

        Raises:
            TypeError, ValueError: An invalid value for a field (the config is left as it was).
        """
        kwargs.pop("kwargs", None)
        fields = set(self.config_class.field_names())
        changes = {k: v for k, v in kwargs.items() if k in fields}
        extras = {k: v for k, v in kwargs.items() if k not in fields}
        if changes:
            self._install_config(self._config.replace(**changes))
            defaults = self._extras.get(_USE_DEFAULTS)
            if isinstance(defaults, list) and any(k in changes for k in defaults):
                extras.setdefault(_USE_DEFAULTS, [k for k in defaults if k not in changes])
        if extras:
            self._update_extras(extras)

    def _write_config(self, key: str, value: Any) -> None:
        """``config[key] = value`` (or ``config.key = value``): as ``register_to_config(key=value)``."""
        if not isinstance(key, str):
            raise TypeError(f"config keys must be strings; got {key!r}")
        self.register_to_config(**{key: value})

    @property
    def _internal_dict(self) -> FrozenDict:
        # diffusers pipelines patch configs through this attribute (e.g. forcing steps_offset=1).
        return self.config

    @_internal_dict.setter
    def _internal_dict(self, value: Mapping[str, Any]) -> None:
        fields = set(self.config_class.field_names())
        self._install_config(self.config_class(**{k: v for k, v in value.items() if k in fields}))
        self._update_extras({k: v for k, v in value.items() if k not in fields and k != "_class_name"}, replace=True)

    # ------------------------------------------------------------------ diffusers' ConfigMixin helpers

    @staticmethod
    def _get_init_keys(input_class: type) -> set[str]:
        """The names of ``input_class.__init__``'s parameters (``self`` included), as diffusers' helper."""
        return set(inspect.signature(getattr(input_class, "__init__")).parameters)  # noqa: B009  (mypy: not an instance)

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """diffusers' classes named in ``_compatibles`` (and this class's name), as diffusers' helper finds
        them; empty without diffusers."""
        names = sorted(set([cls.__name__] + list(cls._compatibles)))
        found = (_diffusers_class(name) for name in names)
        return [c for c in found if c is not None]

    @classmethod
    def _compatible_keys(cls) -> set[str]:
        """The options of the compatible schedulers that this class does not have: from diffusers' classes as
        diffusers finds them, or without diffusers the DDIM-compatible ones (:data:`COMPATIBLE_KEYS`)."""
        keys = _COMPATIBLE_KEYS.get(cls)
        if keys is None:
            classes = cls._get_compatibles()
            if classes:
                keys = set().union(*(cls._get_init_keys(c) for c in classes)) - cls._get_init_keys(cls)
            else:
                keys = set(COMPATIBLE_KEYS) if set(cls._compatibles) & set(KARRAS_COMPATIBLE) else set()
            keys = _COMPATIBLE_KEYS[cls] = keys - {"self", "kwargs"}
        return set(keys)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """Record ``auto_class`` for the ``auto_map`` entry of saved configs, as diffusers does.

        Raises:
            ValueError: ``auto_class`` is not ``"AutoModel"`` (the only one diffusers supports).
        """
        if auto_class != "AutoModel":
            raise ValueError(f"auto_class must be 'AutoModel' (the only one diffusers supports); got {auto_class!r}")
        cls._auto_class = auto_class

    @classmethod
    def _split_config(
        cls, config_dict: Mapping[str, Any], **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
        """diffusers' ``extract_init_dict`` and the keys it warns about (the config keys that are neither this
        class's options, metadata, nor options of a compatible or of the config's own scheduler class)."""
        used_defaults = config_dict.get(_USE_DEFAULTS) or []
        config = {k: v for k, v in config_dict.items() if k not in used_defaults and k != _USE_DEFAULTS}
        original = dict(config)
        expected = cls._get_init_keys(cls) - {"self", "kwargs"} - set(cls.ignore_for_config)
        # Options of compatible schedulers (and of the class the config came from) stay, unused, unwarned.
        foreign = cls._compatible_keys()
        source = _diffusers_class(config.get("_class_name"))
        if source is not None and source.__name__ != cls.__name__:
            foreign |= cls._get_init_keys(source)
        config = {k: v for k, v in config.items() if k in expected or k not in foreign}
        config = {k: v for k, v in config.items() if not str(k).startswith("_") and k != "quantization_config"}
        init: dict[str, Any] = {}
        for key in expected:
            if key in kwargs:
                init[key] = kwargs.pop(key)
                config.pop(key, None)
            elif key in config:
                init[key] = config.pop(key)
        unexpected = list(config)
        hidden = {k: v for k, v in original.items() if k not in init}
        return init, {**config, **kwargs}, hidden, unexpected

    @classmethod
    def extract_init_dict(
        cls, config_dict: Mapping[str, Any], **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split a config (and overrides) as diffusers' ``extract_init_dict`` does.

        Args:
            config_dict: A config mapping of any scheduler; keys listed in its ``_use_default_values`` are
                dropped first.
            **kwargs: Overrides: options of this class replace the config's values.

        Returns:
            ``(init_dict, unused_kwargs, hidden_dict)``: this class's constructor arguments; the config keys
            that are no option of it (nor metadata, nor options of a compatible scheduler) together with the
            unused ``kwargs``; and every config key that is not a constructor argument.
        """
        init, unused, hidden, unexpected = cls._split_config(config_dict, **kwargs)
        if unexpected:
            logger.warning(
                "%s: config keys that are not its options are ignored: %s",
                cls.__name__,
                ", ".join(map(str, unexpected)),
            )
        return init, unused, hidden

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """Build a scheduler from a diffusers-style config (of any scheduler), with overrides.

        Args:
            config: A dict / ``FrozenDict`` (e.g. ``pipe.scheduler.config``), a config dataclass, or a
                scheduler whose ``config`` to take.
            return_unused_kwargs: Also return the keys that were not used, as diffusers does.
            **kwargs: Config fields to change, e.g. ``timestep_spacing="trailing"``.

        Returns:
            The scheduler, or ``(scheduler, unused_kwargs)`` with ``return_unused_kwargs``.

        Raises:
            TypeError, ValueError: Invalid values (as the config dataclass raises them).
        """
        if config is None:
            raise ValueError("from_config needs a config: a mapping, a config dataclass or a scheduler")
        init, unused, hidden, unexpected = cls._split_config(dict(_as_mapping(config)), **kwargs)
        for name in cls._deprecated_kwargs:
            if name in unused:
                init[name] = unused.pop(name)
        unexpected = [k for k in unexpected if k not in cls._deprecated_kwargs and k not in cls._explained_keys]
        unused_kwargs = [k for k in kwargs if k in unused and k not in HUB_KWARGS]
        if unexpected or unused_kwargs:
            logger.warning(
                "%s: ignoring config keys that are not its options: %s",
                cls.__name__,
                ", ".join(map(str, unexpected + unused_kwargs)),
            )
        scheduler = cls(**init)
        kept = {k: v for k, v in hidden.items() if k != "_class_name" and k not in cls._deprecated_kwargs}
        if kept:
            scheduler._update_extras(kept)
        if return_unused_kwargs:
            return scheduler, unused
        return scheduler

    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        return_unused_kwargs: bool = False,
        return_commit_hash: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Read a ``scheduler_config.json`` into a dict, as diffusers' ``load_config`` (local files only).

        Args:
            pretrained_model_name_or_path: The .json file, or a directory holding ``scheduler_config.json``
                (in ``subfolder`` if that has one).
            return_unused_kwargs: Also return the keyword arguments that are not load_config's own.
            return_commit_hash: Also return the commit of a file in a Hugging Face cache snapshot (else None).
            **kwargs: ``subfolder``, and diffusers' download options (``cache_dir``, ``revision``, ...), which
                are accepted and ignored.

        Returns:
            The dict; or a tuple of the dict, then the unused kwargs and/or the commit hash, as asked.

        Raises:
            ConfigFileNotFoundError: No config file there (an OSError, a FileNotFoundError and a ValueError).
            OSError: The file cannot be read (e.g. PermissionError), naming it.
            ValueError: The file is not UTF-8 JSON holding an object.
        """
        subfolder = kwargs.get("subfolder")
        unused = {k: v for k, v in kwargs.items() if k not in LOAD_CONFIG_KWARGS}
        file = config_path(pretrained_model_name_or_path, subfolder)
        config = read_config_file(file)
        if not (return_unused_kwargs or return_commit_hash):
            return config
        outputs: tuple[Any, ...] = (config,)
        if return_unused_kwargs:
            outputs += (unused,)
        if return_commit_hash:
            outputs += (commit_hash(file),)
        return outputs

    @classmethod
    def get_config_dict(cls, *args: Any, **kwargs: Any) -> Any:
        """Deprecated in diffusers in favour of :meth:`load_config`, which it calls (with a FutureWarning)."""
        warnings.warn(
            f"The function get_config_dict is deprecated. Please use {cls.__name__}.load_config instead.",
            FutureWarning,
            stacklevel=2,
        )
        return cls.load_config(*args, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike[str]) -> dict[str, Any]:
        """Read a config file into a dict (see :func:`ddim_sched.compat.config_io.read_config_file`)."""
        return read_config_file(json_file)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load ``scheduler_config.json`` from a local directory (or the .json file itself).

        Args:
            pretrained_model_name_or_path: A directory holding ``scheduler_config.json`` (for a whole
                pipeline, pass ``subfolder="scheduler"``), or the .json file.
            subfolder: Folder inside that directory.
            return_unused_kwargs: Also return the unused keys, as :meth:`from_config`.
            **kwargs: Config fields override the file's values; diffusers' download options
                (``cache_dir``, ``revision``, ...) are accepted and ignored.

        Raises:
            ConfigFileNotFoundError: No config file there (a FileNotFoundError and a ValueError).
            OSError: The file cannot be read (e.g. PermissionError), naming it.
            ValueError: The file is not UTF-8 JSON, or holds invalid values.
        """
        data = read_config(pretrained_model_name_or_path, subfolder)
        options = {k: v for k, v in kwargs.items() if k not in HUB_KWARGS}
        return cls.from_config(data, return_unused_kwargs=return_unused_kwargs, **options)

    def _saved_config(self) -> dict[str, Any]:
        """The config as the file holds it: without ``_use_default_values``, with this release's metadata
        and, after :meth:`register_for_auto_class`, an ``auto_map`` entry (as diffusers writes them)."""
        config = {k: v for k, v in self.config.items() if k not in _NOT_SAVED}
        config["_class_name"] = type(self).__name__
        config["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            auto_map = dict(config.get("auto_map") or {})
            auto_map[self._auto_class] = f"{module}.{type(self).__name__}"
            config["auto_map"] = auto_map
        return config

    def to_json_string(self) -> str:
        """The text of ``scheduler_config.json`` for this scheduler (sorted keys, indented by 2, final newline)."""
        return config_json(self._saved_config())

    def to_json_file(self, json_file_path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json_string` to ``json_file_path`` (atomically; its directory must exist).

        Raises:
            OSError: The file cannot be written; a file already there is left intact.
        """
        write_text(json_file_path, self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``save_directory/scheduler_config.json`` (atomically) that diffusers' class loads too.

        Raises:
            ValueError: ``save_directory`` is a file, or ``push_to_hub`` is asked for (not supported).
            OSError: The file cannot be written; a file already there is left intact.
        """
        if push_to_hub:
            raise ValueError("push_to_hub is not supported: save locally, then upload the folder with huggingface_hub")
        write_config(save_directory, self.to_json_string())

    def save_config(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Alias of :meth:`save_pretrained`, as in diffusers."""
        self.save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
