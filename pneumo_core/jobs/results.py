"""The result file of a `train` or `site adapt` command (`--result-file PATH`): what a job learns from it.

The command writes one JSON object when the new version is saved and registered:
{"version_id", "path", "metrics", "threshold", "active", "seconds"}. It is written atomically (a
temporary file renamed into place), so a reader sees the whole object or no file; the job runner
takes the new version's id from it, never from the command's output, which a stray print could
change.
"""
from __future__ import annotations

import json
from pathlib import Path

from pneumo_core.learn.store import write_text_atomic

FIELDS = ("version_id", "path", "metrics", "threshold", "active", "seconds")


def write_result(path: str | Path, *, version_id: str, version_path: str | Path, metrics: dict, threshold: float,
                 active: bool, seconds: float) -> None:
    """Write the result of a command that saved a model version, atomically.

    Args:
        path: the result file (its folder is made if missing).
        version_id: the new version's id.
        version_path: its folder.
        metrics: its figures ({"test": {...}, "val": {...}} for `train`; the cross-validated ones for a site).
        threshold: its decision threshold.
        active: whether it became the active version (the first of an empty registry).
        seconds: how long the command took.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    result = {"version_id": version_id, "path": str(version_path), "metrics": metrics, "threshold": float(threshold),
              "active": bool(active), "seconds": round(float(seconds), 1)}
    write_text_atomic(Path(path), json.dumps(result, indent=1))


def read_result(path: str | Path) -> dict | None:
    """The result a command wrote at `path`, or None when there is none (or it is not a whole result)."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and set(FIELDS) <= set(result) else None
