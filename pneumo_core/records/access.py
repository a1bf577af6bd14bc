"""Who may do what: the roles, their permissions and the acting user.

Enforced in the library (registry, job queue, audit export take an `Actor` and call `require`),
not only by hiding buttons. The command line acts as the OS user with the `admin` role: a shell on
the server already owns the files, and what it does is recorded under that name.
"""
from __future__ import annotations

from dataclasses import dataclass

from pneumo_core.errors import PermissionDenied
from pneumo_core.settings import os_user

ROLES = ("clinician", "ml_lead", "auditor", "admin")

# action -> roles allowed. Actions are the library's verbs, named once here.
PERMISSIONS: dict[str, frozenset[str]] = {
    "diagnose": frozenset({"clinician", "ml_lead", "admin"}),
    "view_metrics": frozenset({"clinician", "ml_lead", "admin"}),
    "record_verdict": frozenset({"clinician", "ml_lead", "admin"}),   # readers; an auditor only looks
    "submit_job": frozenset({"ml_lead", "admin"}),
    "cancel_job": frozenset({"ml_lead", "admin"}),
    "promote": frozenset({"ml_lead", "admin"}),
    "site_adapt": frozenset({"ml_lead", "admin"}),
    "site_validate": frozenset({"ml_lead", "admin"}),
    # clinical operations (drift of the calls), not audit: an auditor reads the trail, not the model's health
    "view_monitor": frozenset({"ml_lead", "admin"}),
    "view_audit": frozenset({"auditor", "admin"}),
    "export_audit": frozenset({"auditor", "admin"}),
    "manage_users": frozenset({"admin"}),
}


@dataclass(frozen=True)
class Actor:
    """The acting user: a unique name (local account, OIDC email or OS user) and one role."""
    name: str
    role: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise PermissionDenied(f"unknown role {self.role!r}; roles are {', '.join(ROLES)}")

    def may(self, action: str) -> bool:
        """True when this actor's role allows `action` (a key of PERMISSIONS)."""
        return self.role in PERMISSIONS[action]


def require(actor: Actor | None, action: str) -> Actor:
    """Return `actor` if its role allows `action`, else raise PermissionDenied with a clear message.

    Args:
        actor: the acting user; None (nobody signed in) is refused.
        action: a key of PERMISSIONS.
    Returns:
        The same actor, for chaining.
    """
    if actor is None:
        raise PermissionDenied(f"sign in first: {action.replace('_', ' ')} needs a signed-in user")
    if not actor.may(action):
        allowed = " or ".join(sorted(PERMISSIONS[action]))
        raise PermissionDenied(f"{actor.name} ({actor.role}) may not {action.replace('_', ' ')}; "
                               f"that needs the role {allowed}")
    return actor


def cli_actor() -> Actor:
    """The command line's actor: the OS user, with every right (the shell already owns the files)."""
    return Actor(os_user() or "unknown-os-user", "admin")
