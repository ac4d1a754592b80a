"""A minimal progress bar on stderr for the demo's sections."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``label [#####-----] 12/40 1.3s`` on a stream (stderr by default), redrawn at most 10×/s.

    On a terminal the bar is redrawn in place; elsewhere (logs, pipes) only the finished bar is
    written. A disabled bar writes nothing.

    Args:
        label: Text before the bar.
        total: Units of work expected (at least 1 is assumed).
        enabled: Write anything at all.
        stream: Where to write; default ``sys.stderr`` at construction time.
    """

    def __init__(self, label: str, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label, self.total, self.enabled = label, max(int(total), 1), enabled
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.start = self._last = time.perf_counter()
        self._live = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        if self._live:
            self._draw()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units of work."""
        self.count += n
        if not self._live:
            return
        now = time.perf_counter()
        if now - self._last >= 0.1 or self.count >= self.total:
            self._last = now
            self._draw()

    def close(self) -> float:
        """Finish the bar and return the elapsed wall time in seconds."""
        elapsed = time.perf_counter() - self.start
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        return elapsed

    def _draw(self) -> None:
        width = 30
        filled = int(width * min(self.count, self.total) / self.total)
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'-' * (width - filled)}] {self.count}/{self.total} {elapsed:.1f}s"
        )
        self.stream.flush()
