"""A job's progress: the `progress:` lines `train` prints, as the row's stage, step and percent.

Each stage of `train` fills one band of the job's bar (`STAGE_BANDS`; a site adaptation's stages,
`SITE_ADAPT_BANDS`); `ProgressTracker` turns
the lines into the values to store, at most every half second per stage; `describe` says in words
what a job is doing. Pure: no I/O.
"""
from __future__ import annotations

from pneumo_core.progress import parse_line

# Overall progress: each stage of `train` fills one band of the bar.
STAGE_BANDS = {"caching": (0, 45), "tuning": (45, 72), "training": (72, 82), "fine-tuning": (82, 87),
               "scoring": (87, 98), "evaluating": (98, 100)}   # scoring: validation and test with TTA, ~1.5 min
# `site adapt`'s stages in the order it reports them (golive.adaptation.adapt), keyed by the stage's
# start; each band is the share of the run the stage took, measured on this machine (the job test of
# tests/integration/test_site_real.py: tiny model at 64 px, 42 site films, training features cached,
# 2 shared cores, 24 s): loading 29 %, scoring the site films 19 %, folds and figures 3 %, internal
# val 6 % and test 8 %, saving 35 %. Uncached training features add a caching stage (not measured
# there: its band is small, and the bar never goes back).
SITE_ADAPT_BANDS = {"loading": (0, 29), "scoring site films": (29, 48), "caching": (48, 50),
                    "training site fold": (50, 52), "evaluating": (52, 53), "scoring internal val films": (53, 59),
                    "scoring internal test films": (59, 67), "saving": (67, 100)}


def overall_percent(stage: str, done: int, total: int | None, caching_stages: int, caching_seen: int,
                    bands: dict[str, tuple[float, float]] = STAGE_BANDS) -> float:
    """Where a `progress:` line puts the whole job.

    Args:
        stage, done, total: what the line says (`total` None when unknown).
        caching_stages: how many caching stages the job has (they share the caching band, in order).
        caching_seen: how many caching stages have begun, this one included.
        bands: stage -> (low, high) percent; a stage is found by the longest key it starts with, else
            by its first word.
    Returns:
        0..100, one decimal.
    """
    kind = stage.split()[0]
    key = max((k for k in bands if stage.startswith(k)), key=len, default=kind)
    low, high = bands.get(key, (0, 0))
    fraction = done / total if total else 0.0
    if kind == "caching":   # several caching stages share the caching band, in order
        fraction = (min(caching_seen, caching_stages) - 1 + fraction) / max(caching_stages, 1)
    return round(low + (high - low) * max(0.0, min(1.0, fraction)), 1)


class ProgressTracker:
    """Turns the lines `train` prints into the job's stage, step and overall percent. Pure: no I/O.

    `feed(line, now)` returns the values to store when the line is a progress line and a write is
    due (a new stage, or `every` seconds since the last write), else None.
    """

    def __init__(self, caching_stages: int, every: float = 0.5, bands: dict[str, tuple[float, float]] = STAGE_BANDS):
        self.caching_stages, self.every, self.bands = caching_stages, every, bands
        self.caching_seen, self.stage, self.last_write, self.percent = 0, None, float("-inf"), 0.0

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
        # never backwards: a stage met again (a second caching pass) does not pull the bar back
        self.percent = max(self.percent, overall_percent(stage, update.done, update.total, self.caching_stages,
                                                         self.caching_seen, self.bands))
        return {"stage": stage, "step": update.step, "percent": self.percent}


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
