"""Model versions on disk.

A version is a folder `<home>/models/<id>/` holding `model.keras`, `metadata.json`,
`metrics.json`, `predictions.csv`, `history.csv`, `tuner.json` and `ood.npz`; everything shown about a model
comes from that folder, so it can be copied to another machine. A version is written in a hidden
temporary folder and renamed into place, so a crash never leaves a half version visible. The
active version is the one named in `ACTIVE` (written by `promote`), else the newest.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ACTIVE_FILE = "ACTIVE"


class RegistryError(LookupError):
    """No such model, or no model at all; the message says what to do."""


def new_version_id(backbone: str, when: datetime | None = None) -> str:
    when = when or datetime.now(timezone.utc)
    return f"{when:%Y%m%d-%H%M%S}-{backbone}"


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_version(models_dir: Path, version_id: str, model, metadata: dict, metrics: dict,
                 predictions: pd.DataFrame, history: pd.DataFrame, tuner_summary: dict, ood=None) -> Path:
    """Write a complete version folder atomically and return its path (with `ood.npz` if `ood` is given)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / version_id
    if final.exists():
        raise RegistryError(f"model version {version_id} already exists")
    tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".tmp-{version_id}-"))
    try:
        model.save(tmp / "model.keras")
        (tmp / "metadata.json").write_text(json.dumps({**metadata, "id": version_id}, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "tuner.json").write_text(json.dumps(tuner_summary, indent=2))
        predictions.to_csv(tmp / "predictions.csv", index=False)
        history.to_csv(tmp / "history.csv", index=False)
        if ood is not None:  # written inside the temporary folder, so it appears with the rest
            ood.save(tmp / "ood.npz")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _versions(models_dir: Path) -> list[dict]:
    """Metadata of every complete version, newest first; the folder name is the id."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    versions = [{**json.loads((d / "metadata.json").read_text()), "id": d.name} for d in models_dir.iterdir()
                if d.is_dir() and not d.name.startswith(".") and (d / "metadata.json").is_file()]
    return sorted(versions, key=lambda m: (m.get("created", ""), m["id"]), reverse=True)


def _active(models_dir: Path, versions: list[dict]) -> str | None:
    pointer = Path(models_dir) / ACTIVE_FILE
    chosen = pointer.read_text().strip() if pointer.is_file() else None
    if any(m["id"] == chosen for m in versions):
        return chosen
    return versions[0]["id"] if versions else None


def list_versions(models_dir: Path) -> list[dict]:
    """Metadata of every complete version, newest first, with an `active` flag."""
    versions = _versions(models_dir)
    active = _active(models_dir, versions)
    return [{**m, "active": m["id"] == active} for m in versions]


def summaries(models_dir: Path) -> list[dict]:
    """One row per version, newest first: what the registry table shows (id, backbone, date,
    threshold, active, and the test split's ROC-AUC, sensitivity and specificity)."""
    rows = []
    for m in list_versions(models_dir):
        test = read_json(Path(models_dir) / m["id"], "metrics.json").get("test", {})
        rows.append({"id": m["id"], "active": m["active"], "backbone": m["backbone"], "created": m["created"],
                     "threshold": m["threshold"], "roc_auc": test.get("roc_auc"),
                     "sensitivity": test.get("sensitivity"), "specificity": test.get("specificity")})
    return rows


def active_version(models_dir: Path) -> str | None:
    """The promoted version if any (and still present), else the newest, else None."""
    return _active(models_dir, _versions(models_dir))


def promote(models_dir: Path, version_id: str) -> None:
    """Make `version_id` the active version."""
    if not (Path(models_dir) / version_id / "metadata.json").is_file():
        raise RegistryError(f"no model version {version_id} in {models_dir}")
    _write_text_atomic(Path(models_dir) / ACTIVE_FILE, version_id + "\n")


def resolve(models_dir: Path, ref: str | None = None) -> Path:
    """A version folder from an id, a folder path, or None (the active version)."""
    if ref is None:
        active = active_version(models_dir)
        if active is None:
            raise RegistryError(f"no trained model yet in {models_dir}. Train one with: "
                                f"python -m pneumo_core train --data DIR")
        return Path(models_dir) / active
    for candidate in (Path(ref), Path(models_dir) / ref):
        if (candidate / "metadata.json").is_file():
            return candidate
    raise RegistryError(f"no model {ref!r}: not a version id in {models_dir} nor a version folder. "
                        f"List them with: python -m pneumo_core models")


def read_json(version_dir: Path, name: str) -> dict:
    return json.loads((Path(version_dir) / name).read_text())
