"""Progress of long stages (feature caching, tuning, training), reported through a `Reporter` passed in.

The library never prints: `train`, the feature cache and tuning hand `Progress` updates to a reporter.
The command line's `StreamReporter` writes one line per update in the format below, which the job
runner reads back with `parse_line`; the dashboard's `CallbackReporter` hands them to a function
(a progress bar). Both live here, so the format is written and read in one place.

Line format: `progress: STAGE DONE/TOTAL (PCT%) Ns [detail]`, or `progress: STAGE DONE/? Ns [detail]`
when the total is unknown. `Progress` reports when a stage starts, at most about every 5 % of it,
and when it ends, so a log stays short however many items a stage has.
"""
from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

PREFIX = "progress: "
# A stage name may hold a k/N itself ("caching train augmented view 1/3 120/400 (30%) 5s"), so
# DONE/TOTAL is the first k/N followed by (PCT%), Ns or the end of the line.
_LINE = re.compile(r"^progress: (?P<stage>.+?) (?P<done>\d+)/(?P<total>\d+|\?)(?= \(\d+%\)| \d+s|$)")


@dataclass(frozen=True)
class Update:
    """One progress report: `done` of `total` items (None: unknown) of `stage`, `elapsed` s into it."""
    stage: str
    done: int
    total: int | None
    elapsed: float = 0.0
    detail: str = ""

    @property
    def step(self) -> str:
        """'7/20', or '4/?' when the total is unknown."""
        return f"{self.done}/{'?' if self.total is None else self.total}"


class Reporter(Protocol):
    """Where progress goes: anything with `report(update)`."""

    def report(self, update: Update) -> None: ...


class NullReporter:
    """Reports nothing: the default of library calls made without a reporter."""

    def report(self, update: Update) -> None:
        pass


class StreamReporter:
    """Writes each update as a `progress:` line (the command line's reporter, read by the job runner)."""

    def __init__(self, stream=None):
        self.stream = stream

    def report(self, update: Update) -> None:
        stream = self.stream or sys.stdout   # looked up now: a test's or a caller's redirection applies
        stream.write(format_line(update) + "\n")
        stream.flush()


class CallbackReporter:
    """Calls `callback(update)` for each update (e.g. to move a dashboard's progress bar)."""

    def __init__(self, callback: Callable[[Update], None]):
        self.callback = callback

    def report(self, update: Update) -> None:
        self.callback(update)


def format_line(update: Update) -> str:
    """The `progress:` line of an update."""
    percent = "" if update.total is None else f" ({update.done / max(update.total, 1):.0%})"
    return f"{PREFIX}{update.stage} {update.step}{percent} {update.elapsed:.0f}s {update.detail}".rstrip()


def parse_line(line: str) -> Update | None:
    """The update a `progress:` line holds (stage, done, total; not the detail), or None for other lines."""
    match = _LINE.match(line.strip())
    if not match:
        return None
    return Update(match["stage"], int(match["done"]), None if match["total"] == "?" else int(match["total"]))


class Progress:
    """Counts the items of one stage and reports the count to a reporter, throttled to about every `step`."""

    def __init__(self, stage: str, total: int | None, reporter: Reporter | None = None, step: float = 0.05):
        """Args:
            stage: what is counted, e.g. "tuning trial" (the job runner's bands key on its first word).
            total: items in the stage; None when not known in advance (reported as DONE/?).
            reporter: where updates go; None reports nothing.
            step: the least fraction of the total between two reports (the first and last always go).
        """
        self.stage, self.total, self.done = stage, (max(int(total), 1) if total else None), 0
        self.reporter = reporter or NullReporter()
        self.step, self._last_shown, self._start = step, -1.0, time.perf_counter()
        self._show("")

    def update(self, n: int = 1, detail: str = "") -> None:
        """Count `n` more items done (never past the total) and report if due (never twice the same count)."""
        before = self.done
        self.done = self.done + n if self.total is None else min(self.total, self.done + n)
        if self.done == before and self.total is not None:
            return
        if self.total is None or self.done == self.total or self.done / self.total - self._last_shown >= self.step:
            self._show(detail)

    def finish(self, detail: str = "") -> None:
        """Report the stage complete at once (e.g. a cache hit)."""
        if self.total is not None:
            self.update(self.total - self.done, detail)

    def _show(self, detail: str) -> None:
        if self.total is not None:
            self._last_shown = self.done / self.total
        self.reporter.report(Update(self.stage, self.done, self.total, time.perf_counter() - self._start, detail))
