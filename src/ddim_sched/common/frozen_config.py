"""What every frozen configuration dataclass offers (:class:`~ddim_sched.ddim.config.DDIMConfig`,
:class:`~ddim_sched.flow.config.FlowMatchDDIMConfig`): a JSON-ready dict, a validated copy, its field
names and its defaults."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT", bound="FrozenConfig")

# Per config class: every field's default, as to_dict gives it (built once, on first use).
_DEFAULTS: dict[type, dict[str, Any]] = {}


class FrozenConfig:
    """A mixin for ``@dataclass(frozen=True)`` configs whose fields validate in ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        """Return all fields as a JSON-ready dict (tuples as lists)."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]  # subclasses are dataclasses
        values = {f.name: getattr(self, f.name) for f in fields}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all configuration fields."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default value (a new dict each call)."""
        cached = _DEFAULTS.get(cls)
        if cached is None:
            cached = _DEFAULTS[cls] = cls().to_dict()
        return dict(cached)
