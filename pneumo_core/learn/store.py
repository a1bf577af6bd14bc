"""The model store: version folders on disk, written whole or not at all.

A version is a folder `<models>/<id>/` holding `model.keras`, `metadata.json`, `metrics.json`,
`predictions.csv`, `history.csv`, `tuner.json` and `ood.npz`; everything shown about a model
comes from that folder, so it can be copied to another machine (or sit on shared storage). A
version is written in a hidden temporary folder, every file flushed to disk (fsync), then renamed
into place, so a crash or a full disk never leaves a half version visible. `metadata.json` holds
the SHA-256 of `model.keras`; a model whose file changed since is refused at load
(`verify_model_file`), never served. That hash sits beside the file it protects, so the load also
checks the hash recorded in the promotions chain and, where the server has a public key, the
version's signature (`records.registry.check_version`, `serve.loading.load_version`).

Which version is active, and who changed it, is a record: `pneumo_core.records.registry`.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pneumo_core.errors import IntegrityError, RegistryError
from pneumo_core.files import new_file_mode

log = logging.getLogger(__name__)

VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def check_version_id(version_id: str) -> str:
    """Return `version_id` if it is a plain folder name (letters, digits, `_.-`; no separator, no `..`).

    Raises RegistryError otherwise.
    """
    if not isinstance(version_id, str) or not VERSION_ID.match(version_id) or ".." in version_id:
        raise RegistryError(f"{version_id!r} is not a model version id: ids are letters, digits, '_', '.' and '-' "
                            f"(no '/', no '..'). List them with: python -m pneumo_core models")
    return version_id


def new_version_id(backbone: str, when: datetime | None = None) -> str:
    """A new id that sorts by time and cannot collide: 20260101-120000-123456-a1b2-mobilenet_v2."""
    when = when or datetime.now(UTC)
    return check_version_id(f"{when:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(2)}-{backbone}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())    # the content is on disk before the name points at it
        # mkstemp's 0600 whatever the umask: give the pointer the mode any new file gets (0600 under the
        # entry points' private umask, pneumo_core.files; 0644 for a library caller under 022).
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_model_file(version_dir: Path, expected_sha256: str | None = None) -> dict:
    """The version's metadata, after checking `model.keras` against the SHA-256 in its card and, when
    given, against `expected_sha256` (the hash recorded where the folder's writer cannot change it:
    the promotions chain, or a signature).

    Raises IntegrityError when the file changed (never serve it). A version saved before hashes were
    stored has none in its card: it loads, with a warning in the log, unless `expected_sha256` is given.
    """
    version_dir = Path(version_dir)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    stored = metadata.get("model_sha256")
    if stored is None and expected_sha256 is None:
        log.warning("model version %s has no stored SHA-256 (saved before integrity checks); loaded unchecked",
                    version_dir.name)
        return metadata
    actual = file_sha256(version_dir / "model.keras")
    for expected, where in ((stored, "its model card"), (expected_sha256, "the record of its promotion")):
        if expected is not None and actual != expected:
            raise IntegrityError(f"model version {version_dir.name} refused (integrity check failed): its "
                                 f"model.keras does not match the SHA-256 in {where} (file {actual[:12]}…, "
                                 f"recorded {expected[:12]}…). Restore the folder from a backup or activate "
                                 f"another version")
    return metadata


def save_version(models_dir: Path, version_id: str, model, metadata: dict, metrics: dict,
                 predictions: pd.DataFrame, history: pd.DataFrame, tuner_summary: dict, ood=None) -> Path:
    """Write a complete version folder atomically and return its path (with `ood.npz` if `ood` is given).

    The version is not active: `records.registry.register` makes a first version active.

    Raises RegistryError for a bad or taken id, and when the disk is full (nothing is left behind).
    """
    check_version_id(version_id)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / version_id
    if final.exists():
        raise RegistryError(f"model version {version_id} already exists")
    tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=f"{partial_prefix()}{version_id}-"))
    try:
        tmp.chmod(new_file_mode(0o777))   # mkdtemp's 0700: a version folder gets a new folder's usual mode
        model.save(tmp / "model.keras")
        (tmp / "metadata.json").write_text(json.dumps({**metadata, "id": version_id,
                                                       "model_sha256": file_sha256(tmp / "model.keras")}, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "tuner.json").write_text(json.dumps(tuner_summary, indent=2))
        predictions.to_csv(tmp / "predictions.csv", index=False)
        history.to_csv(tmp / "history.csv", index=False)
        if ood is not None:  # written inside the temporary folder, so it appears with the rest
            ood.save(tmp / "ood.npz")
        for file in tmp.iterdir():     # every byte on disk before the folder gets its name
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(models_dir)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            raise RegistryError(f"no space left on the disk of {models_dir} while writing model version "
                                f"{version_id} ({error.strerror}); nothing was registered. Free some space "
                                f"and retrain") from error
        raise
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


# The names of the other half-written output of a training process live here too, beside the version
# folders': a job runner finds what a stopped `train` left without importing training (TensorFlow).

def tuner_run_dir(tuner_dir: Path, pid: int | None = None) -> Path:
    """A new folder for the tuner of one `train` run (removed when its heads are trained), named after the
    process so that a stopped job's leftovers are findable (partial_tuner_runs)."""
    return Path(tuner_dir) / f"run-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}-p{os.getpid() if pid is None else pid}"


def partial_tuner_runs(tuner_dir: Path, pid: int) -> list[Path]:
    """The tuner folders a `train` process `pid` left behind (it was stopped before its heads were trained)."""
    tuner_dir = Path(tuner_dir)
    return sorted(tuner_dir.glob(f"run-*-p{pid}")) if tuner_dir.is_dir() else []


def cache_tmp_suffix(pid: int | None = None) -> str:
    """Name ending of a feature-cache file that process `pid` is still writing (renamed when complete)."""
    return f".{os.getpid() if pid is None else pid}.tmp.npy"


def partial_cache_files(cache_dir: Path, pid: int) -> list[Path]:
    """The half-written feature-cache files of process `pid` (a training process stopped while it embedded)."""
    cache_dir = Path(cache_dir)
    return sorted(cache_dir.glob(f"*{cache_tmp_suffix(pid)}")) if cache_dir.is_dir() else []


def versions(models_dir: Path) -> list[dict]:
    """Metadata of every complete version, newest first; the folder name is the id."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    versions = [{**json.loads((d / "metadata.json").read_text()), "id": d.name} for d in models_dir.iterdir()
                if d.is_dir() and not d.name.startswith(".") and (d / "metadata.json").is_file()]
    return sorted(versions, key=lambda m: (m.get("created", ""), m["id"]), reverse=True)


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
