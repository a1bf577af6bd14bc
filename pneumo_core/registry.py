"""Model versions on disk.

A version is a folder `<home>/models/<id>/` holding `model.keras`, `metadata.json`,
`metrics.json`, `predictions.csv`, `history.csv`, `tuner.json` and `ood.npz`; everything shown about a model
comes from that folder, so it can be copied to another machine. A version is written in a hidden
temporary folder and renamed into place, so a crash never leaves a half version visible.

The active version is the one named in `ACTIVE`. The first version saved becomes active by itself;
every later one is a *candidate* until someone promotes it. Every change of the active version
(first model, promotion, rollback) is appended to `promotions.jsonl`: who, when, from, to.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .errors import RegistryError
from .settings import os_user

ACTIVE_FILE = "ACTIVE"
LOG_FILE = "promotions.jsonl"


def new_version_id(backbone: str, when: datetime | None = None) -> str:
    when = when or datetime.now(UTC)
    return f"{when:%Y%m%d-%H%M%S}-{backbone}"


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide the pointer from a dashboard run as another user
    os.replace(tmp, path)


def save_version(models_dir: Path, version_id: str, model, metadata: dict, metrics: dict,
                 predictions: pd.DataFrame, history: pd.DataFrame, tuner_summary: dict, ood=None) -> Path:
    """Write a complete version folder atomically and return its path (with `ood.npz` if `ood` is given)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / version_id
    if final.exists():
        raise RegistryError(f"model version {version_id} already exists")
    if not _pointer(models_dir) and (previous := _active(models_dir, _versions(models_dir))):
        # A registry from before the ACTIVE pointer: pin its active model so the new one is a candidate.
        _set_active(models_dir, previous, None, "kept active", "pneumo")
    tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=f"{partial_prefix()}{version_id}-"))
    try:
        tmp.chmod(0o755)
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
    if not _pointer(models_dir):
        _set_active(models_dir, version_id, None, "first model", "pneumo")
    return final


def partial_prefix(pid: int | None = None) -> str:
    """Name prefix of the temporary folders a process writes (its id inside, so a job runner can
    remove exactly the half-written output of a training process it stopped)."""
    return f".tmp-{os.getpid() if pid is None else pid}-"


def remove_partial(models_dir: Path, pid: int) -> list[Path]:
    """Delete the half-written version folders of process `pid`; returns what was removed."""
    removed = sorted(Path(models_dir).glob(partial_prefix(pid) + "*")) if Path(models_dir).is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _versions(models_dir: Path) -> list[dict]:
    """Metadata of every complete version, newest first; the folder name is the id."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    versions = [{**json.loads((d / "metadata.json").read_text()), "id": d.name} for d in models_dir.iterdir()
                if d.is_dir() and not d.name.startswith(".") and (d / "metadata.json").is_file()]
    return sorted(versions, key=lambda m: (m.get("created", ""), m["id"]), reverse=True)


def _pointer(models_dir: Path) -> str | None:
    """The version named in ACTIVE if that version is still there."""
    pointer = Path(models_dir) / ACTIVE_FILE
    chosen = pointer.read_text().strip() if pointer.is_file() else None
    return chosen if chosen and (Path(models_dir) / chosen / "metadata.json").is_file() else None


def _active(models_dir: Path, versions: list[dict]) -> str | None:
    # Newest as a fallback keeps registries written before the ACTIVE pointer usable.
    return _pointer(models_dir) or (versions[0]["id"] if versions else None)


def list_versions(models_dir: Path) -> list[dict]:
    """Metadata of every complete version, newest first, with `active` and `role` (active, candidate
    = never active yet, previous = was active once)."""
    versions = _versions(models_dir)
    active = _active(models_dir, versions)
    was_active = {entry["to"] for entry in promotions(models_dir)}
    return [{**m, "active": m["id"] == active,
             "role": "active" if m["id"] == active else "previous" if m["id"] in was_active else "candidate"}
            for m in versions]


def candidates(models_dir: Path) -> list[str]:
    """Versions never made active, newest first."""
    return [m["id"] for m in list_versions(models_dir) if m["role"] == "candidate"]


def promotions(models_dir: Path) -> list[dict]:
    """Every change of the active version, oldest first: when, who, action, from, to."""
    log = Path(models_dir) / LOG_FILE
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def summaries(models_dir: Path) -> list[dict]:
    """One row per version, newest first: what the registry table shows (id, backbone, date,
    threshold, active, and the test split's ROC-AUC, sensitivity and specificity)."""
    rows = []
    for m in list_versions(models_dir):
        test = read_json(Path(models_dir) / m["id"], "metrics.json").get("test", {})
        rows.append({"id": m["id"], "active": m["active"], "role": m["role"], "backbone": m["backbone"],
                     "created": m["created"],
                     "threshold": m["threshold"], "roc_auc": test.get("roc_auc"),
                     "sensitivity": test.get("sensitivity"), "specificity": test.get("specificity")})
    return rows


def active_version(models_dir: Path) -> str | None:
    """The promoted version if any (and still present), else the newest, else None."""
    return _active(models_dir, _versions(models_dir))


def change_kind(models_dir: Path, version_id: str) -> str:
    """What making `version_id` active would be: "rollback" to a version older than the active one, else
    "promote" (what `promote` records, and what the dashboard's button says)."""
    versions = _versions(models_dir)
    current = _active(models_dir, versions)
    order = [m["id"] for m in versions]      # newest first
    if current not in order or version_id not in order:
        return "promote"
    return "rollback" if order.index(version_id) > order.index(current) else "promote"


def promote(models_dir: Path, version_id: str, who: str | None = None) -> dict:
    """Make `version_id` the active version and record it; returns the log entry.

    Going back to a version older than the active one is recorded as a rollback (`change_kind`).
    """
    if not (Path(models_dir) / version_id / "metadata.json").is_file():
        raise RegistryError(f"no model version {version_id} in {models_dir}. "
                            f"List them with: python -m pneumo_core models")
    action = change_kind(models_dir, version_id)
    return _set_active(models_dir, version_id, active_version(models_dir), action, who)


def _set_active(models_dir: Path, version_id: str, current: str | None, action: str, who: str | None) -> dict:
    entry = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
             "who": who or os_user() or "unknown",
             "action": action, "from": current, "to": version_id}
    # The log line goes first: an active model nobody can account for is worse than a logged no-op.
    with open(Path(models_dir) / LOG_FILE, "a") as log:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        os.fsync(log.fileno())
    _write_text_atomic(Path(models_dir) / ACTIVE_FILE, version_id + "\n")
    return entry


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


def read_history(version_dir: Path) -> pd.DataFrame:
    """The version's training curves: one row per epoch and `member` (head number, or "fine-tune"), with
    loss, val_loss, val_auc, val_accuracy where measured."""
    return pd.read_csv(Path(version_dir) / "history.csv")


def test_predictions(version_dir: Path) -> pd.DataFrame:
    """The version's per-film predictions on its test split: path, label, probability."""
    frame = pd.read_csv(Path(version_dir) / "predictions.csv")
    return frame[frame["split"] == "test"].reset_index(drop=True) if "split" in frame else frame
