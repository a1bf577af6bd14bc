"""Loading a model version to serve: the one door every server-side load goes through.

The command line (`predict`, `evaluate`, `cam`, `review`, `pacs watch`) and the dashboard's loaders
load a version here: its files are checked against what was recorded outside the folder (the hash
in the promotions chain) and, where the server has a public key, against the version's signature
(`records.registry.check_version`), before Keras reads a byte of it. A refused version raises
`IntegrityError`, whose message says "integrity check failed" and what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pneumo_core.records import registry

if TYPE_CHECKING:  # TensorFlow is imported only when a model is actually loaded
    from pneumo_core.learn.model import PneumoModel


def load_version(models_dir: Path, ref: str | Path | None = None, verify_key: Path | None = None) -> PneumoModel:
    """A model version, checked and loaded (TensorFlow).

    Args:
        models_dir: the registry folder.
        ref: a version id, a version folder, or None (the active version).
        verify_key: the public key of whoever signs models (`Settings.verify_key`); None: no signature needed.
    Returns:
        The loaded `PneumoModel`.
    Raises:
        RegistryError for an unknown version; IntegrityError for one whose files are not the recorded ones.
    """
    from pneumo_core.learn.model import PneumoModel
    version_dir = registry.resolve(models_dir, None if ref is None else str(ref))
    checked = registry.check_version(version_dir, models_dir, verify_key)
    return PneumoModel.load(version_dir, expected_sha256=checked["sha256"])
