"""Which model version is active, and every change of it, as a record.

The versions themselves are folders in the model store (`pneumo_core.learn.store`). The active
version is the one named in `ACTIVE`. The first version registered becomes active by itself
(`register`); every later one is a *candidate* until someone with the right role promotes it. A
missing `ACTIVE` (with versions present) or one naming a version that is not there stops diagnosis
with a message (`resolve`); nothing is activated silently. Every change of the active version
(first model, promotion, rollback) is appended to `promotions.jsonl` — when, who, from, to — as a
hash chain (each entry's `hash` covers the previous entry's hash and its own content, see
`audit.chain_hash`), under a file lock, and refused when the active version is not the one the
caller saw. Each entry records the SHA-256 of the `model.keras` it made active: `check_version`
refuses to load a version whose file is not the one recorded (the hash in `metadata.json` sits
beside the file it protects; the chain is anchored outside the folder, see `records.anchor`), and,
where the server has a public key, one whose signature does not hold (`records.signing`).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pneumo_core.errors import IntegrityError, RegistryError
from pneumo_core.learn import store
from pneumo_core.learn.store import (
    VERSION_ID,
    check_version_id,
    file_sha256,
    read_json,
    verify_model_file,
    versions,
    write_text_atomic,
)
from pneumo_core.records import signing
from pneumo_core.records.access import Actor, require
from pneumo_core.records.audit import GENESIS, chain_hash

log = logging.getLogger(__name__)

ACTIVE_FILE = "ACTIVE"
LOG_FILE = "promotions.jsonl"
LOCK_FILE = ".lock"
SYSTEM = "pneumo"   # who activates the first model: the rule, not a person
UNCHECKED = object()   # promote(expected_active=...) not given: the caller did not look


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


def _pointer_text(models_dir: Path) -> str | None:
    pointer = Path(models_dir) / ACTIVE_FILE
    return (pointer.read_text().strip() or None) if pointer.is_file() else None


def _pointer(models_dir: Path) -> str | None:
    """The version named in ACTIVE if that version is there."""
    chosen = _pointer_text(models_dir)
    return chosen if chosen and VERSION_ID.match(chosen) and ".." not in chosen and \
        (Path(models_dir) / chosen / "metadata.json").is_file() else None


def list_versions(models_dir: Path) -> list[dict]:
    """Metadata of every complete version, newest first, with `active` and `role` (active, candidate
    = never active yet, previous = was active once)."""
    versions = store.versions(models_dir)
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


def replaced(models_dir: Path, version_id: str) -> str | None:
    """The version `version_id` replaced when it last became active (None: it was the first, or never active)."""
    entry = next((e for e in reversed(promotions(models_dir)) if e.get("to") == version_id), None)
    return entry.get("from") if entry else None


def chain_heads(models_dir: Path) -> list[str]:
    """The chain's hash after each entry, oldest first (entries from before the chain folded in): what
    `records.anchor` compares with the heads it anchored."""
    previous, heads = GENESIS, []
    for entry in promotions(models_dir):
        previous = entry["hash"] if "hash" in entry else chain_hash(previous, entry)
        heads.append(previous)
    return heads


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


def register(models_dir: Path, version_id: str, signing_key: Path | None = None) -> bool:
    """Record a newly saved version: the first version of an empty registry becomes active by itself
    (recorded as "first model", by the rule, not a person); every later one stays a candidate.

    Args:
        models_dir: the registry folder.
        version_id: the version `store.save_version` just wrote.
        signing_key: an Ed25519 private key (`PNEUMO_SIGNING_KEY`): the version is signed with it first.
    Returns:
        True when `version_id` became the active version.
    """
    if signing_key is not None:
        signing.sign_version(Path(models_dir) / check_version_id(version_id), signing_key)
    with _locked(models_dir):
        if not (Path(models_dir) / ACTIVE_FILE).exists() and \
                not [v for v in versions(models_dir) if v["id"] != version_id]:
            _set_active(models_dir, version_id, None, "first model", SYSTEM)
    return active_version(models_dir) == version_id


def change_kind(models_dir: Path, version_id: str, current: str | None = None) -> str:
    """What making `version_id` active would be: "rollback" to a version older than the active one
    (`current`, default: the one in ACTIVE), else "promote" (what `promote` records, and what the
    dashboard's button says)."""
    current = current if current is not None else _pointer_text(models_dir)
    order = [m["id"] for m in versions(models_dir)]      # newest first
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
    verify_model_file(Path(models_dir) / version_id)   # a changed file is never promoted
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
    heads = chain_heads(models_dir)
    previous = heads[-1] if heads else GENESIS
    entry = {"when": datetime.now(UTC).isoformat(timespec="milliseconds"), "who": who,
             "action": action, "from": current, "to": version_id,
             "model_sha256": file_sha256(Path(models_dir) / version_id / "model.keras"), "prev": previous}
    entry["hash"] = chain_hash(previous, entry)
    # The log line goes first: an active model nobody can account for is worse than a logged no-op.
    with open(Path(models_dir) / LOG_FILE, "a") as log_file:
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()
        os.fsync(log_file.fileno())
    write_text_atomic(Path(models_dir) / ACTIVE_FILE, version_id + "\n")
    return entry


def recorded_sha256(models_dir: Path, version_id: str) -> str | None:
    """The SHA-256 of `model.keras` recorded when `version_id` was last made active, or None (never
    active, or made active before hashes were recorded)."""
    for entry in reversed(promotions(models_dir)):
        if entry.get("to") == version_id and entry.get("model_sha256"):
            return entry["model_sha256"]
    return None


def check_version(version_dir: Path, models_dir: Path | None = None, verify_key: Path | None = None) -> dict:
    """Whether a version may be loaded: its files are the ones recorded and, with a key, signed.

    Checks `model.keras` against its card; for a version of the registry (`version_dir` in
    `models_dir`), that the promotions chain is intact and the file is the one its last promotion
    recorded; with `verify_key`, the version's Ed25519 signature (`signing.verify_version`).

    Args:
        version_dir: the version folder.
        models_dir: the registry it belongs to (None: a folder given by path, no chain to check).
        verify_key: the public key of whoever signs models (`PNEUMO_VERIFY_KEY`), or None.
    Returns:
        {"metadata": the card, "sha256": the checked hash of model.keras}.
    Raises:
        IntegrityError naming what does not match.
    """
    version_dir = Path(version_dir)
    expected = None
    if models_dir is not None and version_dir.parent.resolve() == Path(models_dir).resolve():
        chain = verify_promotions(models_dir)
        if not chain["ok"]:
            raise IntegrityError(f"model version {version_dir.name} refused (integrity check failed): the record of "
                                 f"promotions is broken: {chain['problem']}. Run: python -m pneumo_core audit verify")
        expected = recorded_sha256(models_dir, version_dir.name)
    metadata = verify_model_file(version_dir, expected)
    if verify_key is not None:
        signing.verify_version(version_dir, verify_key)
    return {"metadata": metadata, "sha256": expected or metadata.get("model_sha256")}


def resolve(models_dir: Path, ref: str | None = None) -> Path:
    """A version folder from an id, a folder path, or None (the active version)."""
    if ref is None:
        active = active_version(models_dir)
        if active is None:
            versions = store.versions(models_dir)
            pointer = _pointer_text(models_dir)
            if not versions:
                raise RegistryError(f"no trained model yet in {models_dir}. Train one with: "
                                    f"python -m pneumo_core train --data DATA_FOLDER (make train: the default "
                                    f"folder)")
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


