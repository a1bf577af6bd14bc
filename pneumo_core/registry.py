"""Model versions on disk.

A version is a folder `<home>/models/<id>/` holding `model.keras`, `metadata.json`,
`metrics.json`, `predictions.csv`, `history.csv`, `tuner.json` and `ood.npz`; everything shown about a model
comes from that folder, so it can be copied to another machine. A version is written in a hidden
temporary folder, every file flushed to disk (fsync), then renamed into place, so a crash or a full
disk never leaves a half version visible. `metadata.json` holds the SHA-256 of `model.keras`; a
model whose file changed since is refused at load (`verify_model_file`), never served.

The active version is the one named in `ACTIVE`. The first version saved becomes active by itself;
every later one is a *candidate* until someone with the right role promotes it. A missing `ACTIVE`
(with versions present) or one naming a version that is not there stops diagnosis with a message
(`resolve`); nothing is activated silently. Every change of the active version (first model,
promotion, rollback) is appended to `promotions.jsonl` — when, who, from, to — as a hash chain
(each entry's `hash` covers the previous entry's hash and its own content, see `audit.chain_hash`),
under a file lock, and refused when the active version is not the one the caller saw.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .access import Actor, require
from .audit import GENESIS, chain_hash
from .errors import RegistryError

log = logging.getLogger(__name__)

ACTIVE_FILE = "ACTIVE"
LOG_FILE = "promotions.jsonl"
LOCK_FILE = ".lock"
SYSTEM = "pneumo"   # who activates the first model: the rule, not a person
UNCHECKED = object()   # promote(expected_active=...) not given: the caller did not look
_VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def check_version_id(version_id: str) -> str:
    """Return `version_id` if it is a plain folder name (letters, digits, `_.-`; no separator, no `..`).

    Raises RegistryError otherwise.
    """
    if not isinstance(version_id, str) or not _VERSION_ID.match(version_id) or ".." in version_id:
        raise RegistryError(f"{version_id!r} is not a model version id: ids are letters, digits, '_', '.' and '-' "
                            f"(no '/', no '..'). List them with: python -m pneumo_core models")
    return version_id


def new_version_id(backbone: str, when: datetime | None = None) -> str:
    """A new id that sorts by time and cannot collide: 20260101-120000-123456-a1b2-mobilenet_v2."""
    when = when or datetime.now(UTC)
    return check_version_id(f"{when:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(2)}-{backbone}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())    # the content is on disk before the name points at it
        os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide the pointer from a dashboard run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_model_file(version_dir: Path) -> dict:
    """The version's metadata, after checking `model.keras` against the SHA-256 stored at registration.

    Raises RegistryError when the file changed (never serve it). A version saved before hashes were
    stored has none to check: it loads, with a warning in the log.
    """
    version_dir = Path(version_dir)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    expected = metadata.get("model_sha256")
    if expected is None:
        log.warning("model version %s has no stored SHA-256 (saved before integrity checks); loaded unchecked",
                    version_dir.name)
        return metadata
    actual = file_sha256(version_dir / "model.keras")
    if actual != expected:
        raise RegistryError(f"model version {version_dir.name} refused: its model.keras has changed since it was "
                            f"registered (SHA-256 {actual[:12]}…, registered {expected[:12]}…). Restore the "
                            f"folder from a backup or activate another version")
    return metadata


@contextmanager
def _locked(models_dir: Path):
    """An exclusive lock on the registry (fcntl, so it holds between threads and processes)."""
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(models_dir) / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save_version(models_dir: Path, version_id: str, model, metadata: dict, metrics: dict,
                 predictions: pd.DataFrame, history: pd.DataFrame, tuner_summary: dict, ood=None) -> Path:
    """Write a complete version folder atomically and return its path (with `ood.npz` if `ood` is given).

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
        tmp.chmod(0o755)
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
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(models_dir)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            raise RegistryError(f"no space left on the disk of {models_dir} while writing model version "
                                f"{version_id} ({error.strerror}); nothing was registered. Free some space "
                                f"and retrain") from error
        raise
    with _locked(models_dir):
        if not (models_dir / ACTIVE_FILE).exists() and not [v for v in _versions(models_dir) if v["id"] != version_id]:
            _set_active(models_dir, version_id, None, "first model", SYSTEM)
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


def _pointer_text(models_dir: Path) -> str | None:
    pointer = Path(models_dir) / ACTIVE_FILE
    return (pointer.read_text().strip() or None) if pointer.is_file() else None


def _pointer(models_dir: Path) -> str | None:
    """The version named in ACTIVE if that version is there."""
    chosen = _pointer_text(models_dir)
    return chosen if chosen and _VERSION_ID.match(chosen) and ".." not in chosen and \
        (Path(models_dir) / chosen / "metadata.json").is_file() else None


def list_versions(models_dir: Path) -> list[dict]:
    """Metadata of every complete version, newest first, with `active` and `role` (active, candidate
    = never active yet, previous = was active once)."""
    versions = _versions(models_dir)
    active = _pointer(models_dir)
    was_active = {entry["to"] for entry in promotions(models_dir)}
    return [{**m, "active": m["id"] == active,
             "role": "active" if m["id"] == active else "previous" if m["id"] in was_active else "candidate"}
            for m in versions]


def candidates(models_dir: Path) -> list[str]:
    """Versions never made active, newest first."""
    return [m["id"] for m in list_versions(models_dir) if m["role"] == "candidate"]


def promotions(models_dir: Path) -> list[dict]:
    """Every change of the active version, oldest first: when, who, action, from, to (and the chain's
    `prev` and `hash`; entries written before the chain have none)."""
    log_file = Path(models_dir) / LOG_FILE
    if not log_file.is_file():
        return []
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]


def verify_promotions(models_dir: Path) -> dict:
    """Check the promotions chain and that `ACTIVE` names the chain's last `to`.

    Entries written before the chain (no `hash`) are folded into the chain's start, so changing
    them breaks the first chained entry.

    Returns:
        {"ok": bool, "problem": the first broken link in words or None, "entries": count, "last": hash}.
    """
    previous, entries = GENESIS, promotions(models_dir)
    for number, entry in enumerate(entries, 1):
        if "hash" not in entry:   # written before the chain: no stored link, but folded in
            previous = chain_hash(previous, entry)
            continue
        content = {k: v for k, v in entry.items() if k != "hash"}
        if entry.get("prev") != previous:
            return {"ok": False, "entries": len(entries), "last": previous,
                    "problem": f"{LOG_FILE} entry {number}: its link to the previous entry is broken (an earlier "
                               f"entry was changed, deleted or inserted)"}
        if chain_hash(previous, content) != entry["hash"]:
            return {"ok": False, "entries": len(entries), "last": previous,
                    "problem": f"{LOG_FILE} entry {number}: its content does not match its hash (changed)"}
        previous = entry["hash"]
    pointer = _pointer_text(models_dir)
    if entries and pointer != entries[-1]["to"]:
        return {"ok": False, "entries": len(entries), "last": previous,
                "problem": (f"{ACTIVE_FILE} names {pointer}" if pointer else f"{ACTIVE_FILE} is missing") +
                           f" but the last recorded change made {entries[-1]['to']} active (the pointer was changed "
                           f"outside Pneumo)"}
    return {"ok": True, "problem": None, "entries": len(entries), "last": previous}


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
    """The version named in ACTIVE if it is there, else None (see `resolve` for why none is active)."""
    return _pointer(models_dir)


def change_kind(models_dir: Path, version_id: str, current: str | None = None) -> str:
    """What making `version_id` active would be: "rollback" to a version older than the active one
    (`current`, default: the one in ACTIVE), else "promote" (what `promote` records, and what the
    dashboard's button says)."""
    current = current if current is not None else _pointer_text(models_dir)
    order = [m["id"] for m in _versions(models_dir)]      # newest first
    if current not in order or version_id not in order:
        return "promote"
    return "rollback" if order.index(version_id) > order.index(current) else "promote"


def promote(models_dir: Path, version_id: str, *, actor: Actor, expected_active=UNCHECKED, trail=None) -> dict:
    """Make `version_id` the active version and record it; returns the log entry.

    Going back to a version older than the active one is recorded as a rollback.

    Args:
        models_dir: the registry folder.
        version_id: the version to activate.
        actor: who does it; needs the "promote" permission (ml_lead, admin).
        expected_active: the active version the caller saw (None: none); when given and no longer
            active, the change is refused (someone else changed it meanwhile).
        trail: an `audit.AuditTrail` to record the change in as well (event "promotion" or "rollback").
    Raises:
        PermissionDenied for other roles; RegistryError for an unknown version or a changed active one.
    """
    require(actor, "promote")
    check_version_id(version_id)
    if not (Path(models_dir) / version_id / "metadata.json").is_file():
        raise RegistryError(f"no model version {version_id} in {models_dir}. "
                            f"List them with: python -m pneumo_core models")
    with _locked(models_dir):
        current = _pointer_text(models_dir)
        if expected_active is not UNCHECKED and current != expected_active:
            raise RegistryError(f"the active model changed to {current} since you looked; reload")
        action = change_kind(models_dir, version_id, current)
        entry = _set_active(models_dir, version_id, current, action, actor.name)
    if trail is not None:
        trail.event(action if action == "rollback" else "promotion", actor.name,
                    **{k: entry[k] for k in ("from", "to", "hash")})
    return entry


def _set_active(models_dir: Path, version_id: str, current: str | None, action: str, who: str) -> dict:
    """Append the chained log entry, then move the pointer; the caller holds the lock."""
    entries = promotions(models_dir)
    previous = GENESIS
    for entry in entries:
        previous = entry["hash"] if "hash" in entry else chain_hash(previous, entry)
    entry = {"when": datetime.now(UTC).isoformat(timespec="milliseconds"), "who": who,
             "action": action, "from": current, "to": version_id, "prev": previous}
    entry["hash"] = chain_hash(previous, entry)
    # The log line goes first: an active model nobody can account for is worse than a logged no-op.
    with open(Path(models_dir) / LOG_FILE, "a") as log_file:
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()
        os.fsync(log_file.fileno())
    _write_text_atomic(Path(models_dir) / ACTIVE_FILE, version_id + "\n")
    return entry


def resolve(models_dir: Path, ref: str | None = None) -> Path:
    """A version folder from an id, a folder path, or None (the active version)."""
    if ref is None:
        active = active_version(models_dir)
        if active is None:
            versions = _versions(models_dir)
            pointer = _pointer_text(models_dir)
            if not versions:
                raise RegistryError(f"no trained model yet in {models_dir}. Train one with: "
                                    f"python -m pneumo_core train --data DIR")
            if pointer:
                raise RegistryError(f"no active model: {ACTIVE_FILE} names {pointer!r}, which is not a model version "
                                    f"in {models_dir}. Choose one with: python -m pneumo_core promote VERSION")
            raise RegistryError(f"no active model: {models_dir} has {len(versions)} version(s) but no {ACTIVE_FILE} "
                                f"pointer. Choose one with: python -m pneumo_core promote VERSION")
        return Path(models_dir) / active
    if (Path(ref) / "metadata.json").is_file() and os.sep in str(ref):   # a folder path, from the command line
        return Path(ref)
    if (Path(models_dir) / check_version_id(ref) / "metadata.json").is_file():
        return Path(models_dir) / ref
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
