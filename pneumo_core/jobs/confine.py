"""Paths typed in the dashboard stay inside the folders the deployment configured.

A Retrain form field is typed by a signed-in user, not by whoever owns the server's shell: a
weights "file" of `/etc/shadow` or a data folder of `/home` must be refused before a job reads it.
Data folders must lie under the configured data folder's parent (so a site's films beside the
training set can be chosen); weights files under the configured weights folder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pneumo_core.errors import JobError
from pneumo_core.settings import Settings, TrainConfig

WEIGHTS_WORDS = ("auto", "imagenet", "none")


def within(path: str | Path, roots: list[Path], what: str) -> Path:
    """`path` resolved (symbolic links and '..' followed), or JobError when it is outside every root.

    Args:
        path: as typed.
        roots: the allowed folders.
        what: what the path is for, named in the message.
    Returns:
        The resolved path.
    """
    resolved = Path(path).expanduser().resolve()
    allowed = [Path(r).resolve() for r in roots]
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        raise JobError(f"the {what} must lie inside {' or '.join(str(r) for r in allowed)} (the folders this server "
                       f"is configured with); got a path outside them")
    return resolved


def check_form_paths(config: TrainConfig, settings: Settings) -> TrainConfig:
    """The train options of a dashboard form, with `data_dir` and `weights` checked against the settings.

    Args:
        config: the form's options.
        settings: the server's settings (PNEUMO_DATA, PNEUMO_WEIGHTS_DIR).
    Returns:
        A copy with the paths resolved.
    """
    data_dir = str(within(config.data_dir, [settings.data_dir.parent], "data folder"))
    weights = str(config.weights or "auto").strip()
    if weights.lower() not in WEIGHTS_WORDS:
        weights = str(within(weights, [settings.weights_dir], "weights file"))
    return dataclasses.replace(config, data_dir=data_dir, weights=weights)
