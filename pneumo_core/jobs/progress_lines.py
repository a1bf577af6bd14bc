"""A job's progress: the `progress:` lines `train` prints, as the row's stage, step and percent.

Each stage of `train` fills one band of the job's bar (`STAGE_BANDS`); `ProgressTracker` turns
the lines into the values to store, at most every half second per stage; `describe` says in words
what a job is doing. Pure: no I/O.
"""
from __future__ import annotations

from pneumo_core.progress import parse_line

# Overall progress: each stage of `train` fills one band of the bar.
STAGE_BANDS = {"caching": (0, 45), "tuning": (45, 72), "training": (72, 82), "fine-tuning": (82, 87),
               "scoring": (87, 98), "evaluating": (98, 100)}   # scoring: validation and test with TTA, ~1.5 min


def overall_percent(stage: str, done: int, total: int | None, caching_stages: int, caching_seen: int) -> float:
    """Where a `progress:` line puts the whole job.

    Args:
        stage, done, total: what the line says (`total` None when unknown).
        caching_stages: how many caching stages the job has (they share the caching band, in order).
        caching_seen: how many caching stages have begun, this one included.
    Returns:
        0..100, one decimal.
    """
    kind = stage.split()[0]
    low, high = STAGE_BANDS.get(kind, (0, 0))
    fraction = done / total if total else 0.0
    if kind == "caching":   # several caching stages share the caching band, in order
        fraction = (min(caching_seen, caching_stages) - 1 + fraction) / max(caching_stages, 1)
    return round(low + (high - low) * max(0.0, min(1.0, fraction)), 1)


class ProgressTracker:
    """Turns the lines `train` prints into the job's stage, step and overall percent. Pure: no I/O.

    `feed(line, now)` returns the values to store when the line is a progress line and a write is
    due (a new stage, or `every` seconds since the last write), else None.
    """

    def __init__(self, caching_stages: int, every: float = 0.5):
        self.caching_stages, self.every = caching_stages, every
        self.caching_seen, self.stage, self.last_write = 0, None, float("-inf")

    def feed(self, line: str, now: float) -> dict | None:
        """The row's new {stage, step, percent} for one output line read at `now` (seconds), or None."""
        update = parse_line(line.strip())
        if update is None:
            return None
        stage = update.stage
        if stage != self.stage and stage.startswith("caching"):
            self.caching_seen += 1
        if stage == self.stage and now - self.last_write <= self.every:
            return None
        self.stage, self.last_write = stage, now
        return {"stage": stage, "step": update.step,
                "percent": overall_percent(stage, update.done, update.total, self.caching_stages, self.caching_seen)}


def describe(job: dict) -> str:
    """What a job is doing, in words: 'tuning trial 3/20', 'caching validation (120/400)', 'queued'."""
    if job["state"] == "queued":
        return "queued: starts when the running job ends"
    if job["state"] != "running":
        return job["state"]
    stage, step = job["stage"] or "starting", job["step"]
    if not step or stage in ("starting", "done"):
        return stage
    return f"{stage} {step}" if stage.split()[-1] in ("trial", "head", "epoch") else f"{stage} ({step})"
