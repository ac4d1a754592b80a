"""Where a sampling loop is in its schedule: ``set_begin_index`` / ``begin_index`` / ``step_index``, as
diffusers' pipelines use them for img2img (a loop that starts part-way through the schedule)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .validation import check_int


class StepProgress:
    """Counts the steps taken since the schedule was set; the scheduler provides ``timesteps``."""

    _begin_index: int | None

    if TYPE_CHECKING:

        @property
        def timesteps(self) -> torch.Tensor: ...

    def _reset_progress(self) -> None:
        self._begin_index = None
        self._steps_taken = 0
        self._first_timestep: Any = None

    def _count_step(self, timestep: Any) -> None:
        if self._first_timestep is None:
            self._first_timestep = timestep
        self._steps_taken += 1

    @property
    def begin_index(self) -> int | None:
        """Index of the first timestep to run, set by a pipeline with :meth:`set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Declare that sampling starts at ``timesteps[begin_index]`` (img2img); call after set_timesteps.

        Raises:
            TypeError: Not an int.
            ValueError: Outside [0, len(timesteps)).
        """
        index = check_int("begin_index", begin_index)
        if not 0 <= index < len(self.timesteps):
            raise ValueError(f"begin_index must lie in [0, {len(self.timesteps)}); got {index}")
        self._begin_index = index

    @property
    def step_index(self) -> int | None:
        """Index in :attr:`timesteps` of the next step (None before the first step).

        When begin_index is unset and the first timestep was a device tensor, reading this property
        copies one value to the host; stepping never does. With several threads stepping one scheduler
        the count is theirs together.
        """
        if self._first_timestep is None:
            return None
        start = self._begin_index
        if start is None:
            start = self._index_of_first(self._first_timestep)
            if start is None:
                return None
        return start + self._steps_taken

    def _index_of_first(self, first: Any) -> int | None:
        """The index in :attr:`timesteps` of what ``_count_step`` recorded first (here: the timestep itself,
        an int or a one-element tensor); None when it is not one of them."""
        if isinstance(first, torch.Tensor):
            if first.numel() != 1:
                return None
            first = int(first.reshape(()).item())
        matches = np.flatnonzero(self.timesteps.cpu().numpy() == first)
        return int(matches[0]) if matches.size else None
