"""Model change notices: a reader is told once that the active model changed since they last looked.

The change is the newest entry of the registry's promotions chain (a promotion or a rollback); a
reader has seen it when the audit trail holds their "model_change_seen" event for that entry (its
hash, or its time and target for entries written before the chain). The marker lives in the audit
trail, so it is per user, not per browser, and survives restarts.
"""
from __future__ import annotations

from pathlib import Path

from pneumo_core.records.registry import promotions

KIND = "model_change_seen"


def _change_id(entry: dict) -> str:
    return entry.get("hash") or f"{entry.get('when')}>{entry.get('to')}"


def unseen_change(models_dir: Path, trail, who: str) -> dict | None:
    """The newest change of the active version that `who` has not been shown, or None.

    Args:
        models_dir: the registry; trail: the AuditTrail; who: the reader's name.
    Returns:
        The promotions entry ({"when", "who", "action", "from", "to", ...}), or None when there was no
        change from an earlier version (a first version is no change) or `who` has seen it.
    """
    entries = promotions(models_dir)
    if not entries or not entries[-1].get("from"):
        return None
    change = entries[-1]
    seen = {e["details"].get("change") for e in trail.events(kind=KIND) if e["who"] == who}
    return None if _change_id(change) in seen else change


def mark_seen(trail, who: str, change: dict) -> int:
    """Record that `who` was shown `change` (a promotions entry); returns the audit event id."""
    return trail.event(KIND, who, change=_change_id(change), to=change.get("to"), was=change.get("from"))


def change_sentence(change: dict) -> str:
    """'The model changed on 2026-03-01 (promotion by ana): version B replaces A. Calls may differ from before.'"""
    return (f"The model changed on {str(change.get('when', ''))[:10]} ({change.get('action', 'promotion')} by "
            f"{change.get('who') or 'unknown'}): version {change.get('to')} replaces {change.get('from')}. "
            f"Calls, probabilities and tiers may differ from what you saw before; films scored earlier say so.")


def earlier_call(trail, sha256: str, model: str) -> dict | None:
    """The newest audit diagnosis of a film by a version other than `model`, or None."""
    from contextlib import closing
    with closing(trail.connection()) as db:
        row = db.execute("SELECT * FROM diagnoses WHERE sha256 = ? AND model != ? ORDER BY id DESC LIMIT 1",
                         (sha256, model)).fetchone()
    return None if row is None else dict(row)
