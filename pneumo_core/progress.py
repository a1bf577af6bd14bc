"""Progress lines on stdout, readable by people and by the job runner.

Format: `progress: STAGE DONE/TOTAL (PCT%) [detail]`, printed when a stage starts, at most about
every 5 % of it, and when it ends, so a log stays short however many items a stage has.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, stage: str, total: int | None, stream=None, step: float = 0.05):
        """`total=None` when the number of items is not known in advance (shown as DONE/?)."""
        self.stage, self.total, self.done = stage, (max(int(total), 1) if total else None), 0
        self.stream = stream or sys.stdout
        self.step, self._last_shown, self._start = step, -1.0, time.perf_counter()
        self._show("")

    def update(self, n: int = 1, detail: str = "") -> None:
        self.done = self.done + n if self.total is None else min(self.total, self.done + n)
        if self.total is None or self.done == self.total or self.done / self.total - self._last_shown >= self.step:
            self._show(detail)

    def _show(self, detail: str) -> None:
        elapsed = time.perf_counter() - self._start
        if self.total is None:
            line = f"progress: {self.stage} {self.done}/? {elapsed:.0f}s"
        else:
            self._last_shown = self.done / self.total
            line = f"progress: {self.stage} {self.done}/{self.total} ({self._last_shown:.0%}) {elapsed:.0f}s"
        print(f"{line} {detail}".rstrip(), file=self.stream, flush=True)
