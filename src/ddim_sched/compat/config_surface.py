"""diffusers' configuration surface, shared by every ddim_sched scheduler: ``config``, ``from_config``,
``from_pretrained``, ``save_pretrained``, ``register_to_config`` and the metadata keys diffusers' own
schedulers carry, so that pipelines and diffusers' own tests treat these classes as theirs.

The rules follow diffusers' ``ConfigMixin`` (0.42.1), written here from its documented behaviour:

* ``config`` is a read-only dict with attribute access. It holds the config's fields as diffusers' class
  names them; ddim_sched's extension fields appear only when they differ from their defaults (so that
  diffusers accepts the config silently) and are readable as ``config.name`` / ``config["name"]`` always.
  After the fields come the metadata keys: ``_use_default_values`` (the fields the constructor was not
  given), ``_class_name`` and ``_diffusers_version``, and any key added with ``register_to_config``.
* ``from_config`` takes the fields it knows, drops the keys listed in ``_use_default_values`` (their
  defaults apply), keeps other keys in the config (a scheduler switched back to another class then
  finds its own options), and warns once, naming them, about keys that are neither fields, metadata,
  nor options of a DDIM-compatible diffusers scheduler (e.g. PNDM's ``skip_prk_steps`` loads silently).
* Reading a config value as an attribute of the scheduler works, with a FutureWarning, as in diffusers.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

from .config_io import CONFIG_NAME, DIFFUSERS_FORMAT_VERSION, read_config, write_config

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
_USE_DEFAULTS = "_use_default_values"


class FrozenDict(dict):
    """A read-only dict with attribute access, like diffusers' ``FrozenDict``.

    Keys in ``hidden`` (extension fields at their defaults) are not among the keys but can be read.
    """

    def __init__(self, items: Mapping[str, Any], hidden: Mapping[str, Any] | None = None) -> None:
        super().__init__(items)
        dict.__setattr__(self, "_hidden", dict(hidden or {}))

    def __missing__(self, key: str) -> Any:
        if key in self._hidden:
            return self._hidden[key]
        raise KeyError(key)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no field {name!r}") from None

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("the scheduler config is frozen; build a new scheduler with from_config(config, **changes)")

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any], dict[str, Any]]]:
        return (type(self), (dict(self), dict(self._hidden)))

    __setitem__ = __delitem__ = __setattr__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]


def _as_mapping(config: Any) -> Mapping[str, Any]:
    """A config given as a mapping, a config dataclass (``to_dict``) or an object with a ``config``."""
    if isinstance(config, Mapping):
        return config
    if hasattr(config, "to_dict") and hasattr(type(config), "field_names"):
        return config.to_dict()
    if isinstance(getattr(config, "config", None), Mapping):
        return config.config
    raise TypeError(f"config must be a mapping, a config dataclass or a scheduler; got {type(config).__name__}")


class ConfigSurface:
    """The config surface of a scheduler whose options live in a frozen dataclass (``config_class``).

    Subclasses set ``config_class`` (with ``field_names()``, ``visible_fields``, ``to_dict()`` and
    ``replace()``) and implement ``_set_config(config)``, which installs a validated config.
    """

    config_class: ClassVar[Any]
    config_name: ClassVar[str] = CONFIG_NAME
    _compatibles: ClassVar[list[str]] = list(KARRAS_COMPATIBLE)
    _deprecated_kwargs: ClassVar[list[str]] = []
    ignore_for_config: ClassVar[list[str]] = []
    has_compatibles: ClassVar[bool] = True

    _config: Any
    _extras: dict[str, Any]

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
        self._set_config(self.config_class(*args, **kwargs))

    # ------------------------------------------------------------------ reading

    @property
    def config(self) -> FrozenDict:
        """The configuration as a read-only dict with attribute access (diffusers' ``FrozenDict``)."""
        values = self._config.to_dict()
        visible = self._visible_fields()
        defaults = self.config_class.defaults()
        shown = {k: v for k, v in values.items() if k in visible or v != defaults[k]}
        hidden = {k: v for k, v in values.items() if k not in shown}
        metadata = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_FORMAT_VERSION}
        return FrozenDict({**shown, **metadata, **self._extras, "_class_name": type(self).__name__}, hidden)

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

    def register_to_config(self, **kwargs: Any) -> None:
        """Add or change config entries, as diffusers' ``register_to_config``: a field changes the scheduler
        (validated; the noise tables and a schedule already set are derived anew), any other key is stored.

        Raises:
            TypeError, ValueError: An invalid value for a field.
        """
        kwargs.pop("kwargs", None)
        fields = set(self.config_class.field_names())
        changes = {k: v for k, v in kwargs.items() if k in fields}
        extras = {k: v for k, v in kwargs.items() if k not in fields}
        if changes:
            self._set_config(self._config.replace(**changes))
        self._extras.update(extras)

    @property
    def _internal_dict(self) -> FrozenDict:
        # diffusers pipelines patch configs through this attribute (e.g. forcing steps_offset=1).
        return self.config

    @_internal_dict.setter
    def _internal_dict(self, value: Mapping[str, Any]) -> None:
        fields = set(self.config_class.field_names())
        self._set_config(self.config_class(**{k: v for k, v in value.items() if k in fields}))
        self._extras = {k: v for k, v in value.items() if k not in fields and k != "_class_name"}

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
        mapping = dict(_as_mapping(config))
        used_defaults = mapping.pop(_USE_DEFAULTS, None) or []
        mapping = {k: v for k, v in mapping.items() if k not in used_defaults}
        fields = cls.config_class.field_names()
        init = {k: mapping[k] for k in fields if k in mapping}
        init.update({k: kwargs.pop(k) for k in fields if k in kwargs})
        init.update({k: mapping[k] for k in cls._deprecated_kwargs if k in mapping})
        init.update({k: kwargs.pop(k) for k in cls._deprecated_kwargs if k in kwargs})
        kept = {k: v for k, v in mapping.items() if k not in init}
        unexpected = [k for k in kept if not k.startswith("_") and k not in COMPATIBLE_KEYS]
        unknown_kwargs = [k for k in kwargs if k not in HUB_KWARGS]
        if unexpected or unknown_kwargs:
            logger.warning(
                "%s: ignoring config keys that are not its options: %s",
                cls.__name__,
                ", ".join(map(str, unexpected + unknown_kwargs)),
            )
        scheduler = cls(**init)
        scheduler._extras.update({k: v for k, v in kept.items() if k != "_class_name"})
        if return_unused_kwargs:
            return scheduler, {**{k: kept[k] for k in unexpected}, **kwargs}
        return scheduler

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
            ValueError: The file is not UTF-8 JSON, or holds invalid values.
        """
        data = read_config(pretrained_model_name_or_path, subfolder)
        options = {k: v for k, v in kwargs.items() if k not in HUB_KWARGS}
        return cls.from_config(data, return_unused_kwargs=return_unused_kwargs, **options)

    def save_pretrained(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``save_directory/scheduler_config.json`` (atomically) that diffusers' class loads too.

        Raises:
            ValueError: ``save_directory`` is a file, or ``push_to_hub`` is asked for (not supported).
            OSError: The file cannot be written; a file already there is left intact.
        """
        if push_to_hub:
            raise ValueError("push_to_hub is not supported: save locally, then upload the folder with huggingface_hub")
        config = dict(self.config)
        config.pop(_USE_DEFAULTS, None)
        write_config(save_directory, config)

    def save_config(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Alias of :meth:`save_pretrained`, as in diffusers."""
        self.save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
