"""Local accounts, sign-in with rate limiting, the one-time setup code, and OIDC role mapping.

Accounts live in `PNEUMO_HOME/users.sqlite` (mode 0600: only the server's OS user reads it): a
unique name, one role of `access.ROLES`, an Argon2id hash (argon2-cffi's defaults, RFC 9106's
low-memory profile, unless PNEUMO_ARGON2_PROFILE names another; never home-made crypto) and a
disabled flag. Nothing is ever deleted: a disabled account keeps its name, so the audit trail's
"who" stays unique.

Failed sign-ins are counted per (account name, client address) and per client address, in the
same file (a restart does not reset them): from `MAX_FAILURES` failures of one name from one client
(`MAX_CLIENT_FAILURES` of one client, whatever the names) on, each further failure makes that pair
(that client) wait `LOCK_SECONDS` x 2^k (capped at `MAX_LOCK_SECONDS`). The account itself is never
locked: a stranger's failures never keep its owner out from another address. Guessing from many
addresses is slowed by Argon2 (one sign-in verified at a time, ~0.3 s each). A count is forgotten
`FORGET_SECONDS` after its last failure, and a pair's by a correct password; an administrator can
clear an account's waits (`unlock`, `python -m pneumo_core users unlock NAME`). The failures of an
account are counted too (`failures("user:NAME")`), for the record only. A name typed that is no
account is never logged (it may be a password typed in the wrong field).

Adding accounts, changing roles, disabling, enabling, resetting passwords and unlocking take the
acting `Actor` and need the "manage_users" permission (admins): checked here, not only on the page.

A fresh server has no administrator: `issue_setup_code()` makes a single-use code (stored as an
Argon2 hash, valid `SETUP_TTL_SECONDS`) that the dashboard prints in its terminal and asks for, to
create the first administrator. Hospitals signing in through OpenID Connect map the provider's
email to a role with a claim or `PNEUMO_HOME/oidc_roles.toml` (`oidc_role`).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import time
import tomllib
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import argon2.profiles
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from pneumo_core.errors import AccountError, LockedOut, SetupError, SignInError
from pneumo_core.records.access import ROLES, Actor, require
from pneumo_core.records.db import SQLITE, Database, integrity_errors
from pneumo_core.settings import argon2_profile

__all__ = ["AccountError", "LockedOut", "SetupError", "SignInError", "UserStore", "oidc_role", "oidc_roles"]
log = logging.getLogger(__name__)

MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # Argon2 hashes any length; a cap keeps a megabyte "password" from costing a request
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # no '@': OIDC users are their email, never a local name
MAX_FAILURES = 5          # per account name and client
MAX_CLIENT_FAILURES = 20  # per client address: higher, since a hospital proxy can put many users behind one
LOCK_SECONDS = 30
MAX_LOCK_SECONDS = 3600
FORGET_SECONDS = 3600
SETUP_TTL_SECONDS = 3600
ROLE_CLAIM = "pneumo_role"  # an ID-token claim naming one role (or a list holding one)
OIDC_ROLES_FILE = "oidc_roles.toml"


def hashing_warning(profile: str) -> str | None:
    """What an operator must hear about an Argon2 profile, or None.

    Args:
        profile: one of `settings.ARGON2_PROFILES`.
    Returns:
        The warning for CHEAPEST (the test suites' cost, which barely slows a guesser), else None.
    """
    if profile == "CHEAPEST":
        return ("PNEUMO_ARGON2_PROFILE=CHEAPEST: passwords are hashed at the test suites' cost, which barely slows "
                "a guesser; unset it on a server")
    return None


@functools.cache
def _hasher_for(profile: str) -> tuple[PasswordHasher, str]:
    """(hasher, dummy hash) of one Argon2 profile. The dummy is verified when the account does not exist,
    so that a wrong name costs as long as a wrong password."""
    hasher = PasswordHasher.from_parameters(getattr(argon2.profiles, profile))
    if warning := hashing_warning(profile):   # said once by every process using it: a copied test setting is noticed
        log.warning(warning)
    return hasher, hasher.hash(secrets.token_hex(16))


def _hasher() -> tuple[PasswordHasher, str]:
    """The hasher of PNEUMO_ARGON2_PROFILE. Its default is argon2-cffi's (Argon2id, t=3, m=64 MiB, p=4):
    one verify took 0.31 s (hash 0.36 s) on this 2-core machine under load; slow enough to hurt guessing,
    quick enough for a sign-in."""
    return _hasher_for(argon2_profile())


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL, changed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, count INTEGER NOT NULL, last REAL NOT NULL,
    locked_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS setup_code (id INTEGER PRIMARY KEY CHECK (id = 1), hash TEXT NOT NULL,
    expires REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0);
"""


# failure key kind -> failures before waits start (0: counted, never waits)
_LIMITS = {"pair": MAX_FAILURES, "client": MAX_CLIENT_FAILURES, "user": 0, "setup": MAX_FAILURES}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """The account name, lower-cased, or AccountError saying what a name may hold."""
    clean = (name or "").strip().lower()
    if not NAME_PATTERN.match(clean):
        raise AccountError(f"account name {name!r} is not valid: use 1 to 64 lower-case letters, digits, '.', '_' "
                           f"or '-', starting with a letter or digit (no '@': OIDC users sign in with their email)")
    return clean


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"the password is too long: at most {MAX_PASSWORD} characters")
    return password


class UserStore:
    """The accounts, failure counters and setup code of one PNEUMO_HOME (`users.sqlite`, mode 0600).

    Args:
        home: PNEUMO_HOME; created if missing.
        clock: seconds since the epoch (tests pass a fake one to skip lockouts without sleeping).
    """

    def __init__(self, home: Path, clock=time.time):
        self.path = Path(home) / "users.sqlite"
        self.clock = clock
        # The hasher and its dummy hash now, not at the first sign-in: an unknown name's first refusal takes as
        # long as the others, and a PNEUMO_ARGON2_PROFILE that is no profile stops the start with its message.
        _hasher()
        self.database = Database("users", self.path, lambda db: db.executescript(_SCHEMA))
        if self.database.dialect != SQLITE:   # the shared server: tables from its migrations
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it, so the hashes are never readable by others, even briefly.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        for suffix in ("-wal", "-shm"):  # SQLite creates these with the umask's mode
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def _connect(self) -> sqlite3.Connection:
        return self.database.connect()

    # Accounts -----------------------------------------------------------------------------------

    def add(self, name: str, role: str, password: str, *, by: Actor) -> dict:
        """Create an account.

        Args:
            name: unique account name (see `check_name`).
            role: one of `access.ROLES`.
            password: at least MIN_PASSWORD characters.
            by: who adds it (needs "manage_users").
        Returns:
            The account as `get` returns it.
        Raises:
            PermissionDenied for a role other than admin; AccountError for a bad or taken name.
        """
        require(by, "manage_users")
        name, role, password = check_name(name), check_role(role), check_password(password)
        now = _now_iso()
        try:
            with closing(self._connect()) as db:
                db.execute("INSERT INTO users (name, role, hash, created, changed) VALUES (?, ?, ?, ?, ?)",
                           (name, role, _hasher()[0].hash(password), now, now))
        except integrity_errors():
            raise AccountError(f"an account named {name!r} already exists (disabled accounts keep their name); "
                               f"choose another name or change its role with `users set-role`") from None
        log.info("account %s added with role %s", name, role)
        return self.get(name)

    def get(self, name: str) -> dict:
        """{name, role, disabled, created, changed} of an account, or AccountError if there is none."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT name, role, disabled, created, changed FROM users WHERE name = ?",
                             ((name or "").strip().lower(),)).fetchone()
        if row is None:
            raise AccountError(f"no account named {name!r}; `python -m pneumo_core users list` shows them")
        return {"name": row[0], "role": row[1], "disabled": bool(row[2]), "created": row[3], "changed": row[4]}

    def list(self) -> list[dict]:
        """Every account, by name (no hashes)."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT name, role, disabled, created, changed FROM users ORDER BY name").fetchall()
        return [{"name": r[0], "role": r[1], "disabled": bool(r[2]), "created": r[3], "changed": r[4]} for r in rows]

    def _change(self, name: str, sql: str, *args) -> dict:
        account = self.get(name)
        with closing(self._connect()) as db:
            db.execute(f"UPDATE users SET {sql}, changed = ? WHERE name = ?", (*args, _now_iso(), account["name"]))
        return self.get(account["name"])

    def set_role(self, name: str, role: str, *, by: Actor) -> dict:
        """Give an account another role; refused if it would leave no enabled administrator.

        Args:
            name: the account; role: its new role; by: who changes it (needs "manage_users").
        """
        require(by, "manage_users")
        role = check_role(role)
        account = self.get(name)
        if account["role"] == "admin" and role != "admin" and not account["disabled"]:
            self._keep_an_admin(account["name"])
        log.info("account %s: role %s -> %s", account["name"], account["role"], role)
        return self._change(name, "role = ?", role)

    def disable(self, name: str, *, by: Actor) -> dict:
        """Disable an account (it can no longer sign in; its name stays taken).

        Args:
            name: the account; by: who disables it (needs "manage_users"; never themselves).
        """
        require(by, "manage_users")
        account = self.get(name)
        if account["name"] == by.name:
            raise AccountError("you cannot disable yourself; another administrator can")
        if account["role"] == "admin" and not account["disabled"]:
            self._keep_an_admin(account["name"])
        log.info("account %s disabled", account["name"])
        return self._change(name, "disabled = 1")

    def enable(self, name: str, *, by: Actor) -> dict:
        """Enable a disabled account again (`by` needs "manage_users")."""
        require(by, "manage_users")
        return self._change(name, "disabled = 0")

    def set_password(self, name: str, password: str, *, by: Actor) -> dict:
        """Replace an account's password (`by` needs "manage_users")."""
        require(by, "manage_users")
        return self._change(name, "hash = ?", _hasher()[0].hash(check_password(password)))

    def unlock(self, name: str, *, by: Actor) -> dict:
        """Clear every wait and failure count of an account (from any client).

        Args:
            name: the account; by: who unlocks it (needs "manage_users").
        Returns:
            The account, with `cleared`: how many (account, client) waits were removed.
        """
        require(by, "manage_users")
        account = self.get(name)
        with closing(self._connect()) as db:
            prefix = f"pair:{account['name']}|"
            cleared = db.execute("DELETE FROM failures WHERE substr(key, 1, ?) = ? OR key = ?",
                                 (len(prefix), prefix, f"user:{account['name']}")).rowcount
        log.info("account %s unlocked by %s (%d wait(s) cleared)", account["name"], by.name, cleared)
        return {**account, "cleared": cleared}

    def _keep_an_admin(self, leaving: str) -> None:
        others = [a for a in self.list() if a["role"] == "admin" and not a["disabled"] and a["name"] != leaving]
        if not others:
            raise AccountError(f"{leaving} is the last enabled administrator; add or enable another admin first")

    def has_admin(self) -> bool:
        """True when at least one enabled account has the admin role."""
        return any(a["role"] == "admin" and not a["disabled"] for a in self.list())

    # Sign-in --------------------------------------------------------------------------------------

    def _lock_remaining(self, db, keys: list[str]) -> float:
        now = self.clock()
        rows = db.execute(f"SELECT locked_until FROM failures WHERE key IN ({', '.join('?' * len(keys))})",
                          keys).fetchall()
        return max([r[0] - now for r in rows] + [0.0])

    def _fail(self, db, keys: list[str]) -> float:
        """Count one failure under each key; returns the longest wait it started (0: none)."""
        now, started = self.clock(), 0.0
        for key in keys:
            row = db.execute("SELECT count, last FROM failures WHERE key = ?", (key,)).fetchone()
            count = 1 if row is None or now - row[1] > FORGET_SECONDS else row[0] + 1
            limit = _LIMITS.get(key.split(":", 1)[0], MAX_FAILURES)
            wait = min(MAX_LOCK_SECONDS, LOCK_SECONDS * 2 ** (count - limit)) if limit and count >= limit else 0.0
            started = max(started, wait)
            db.execute("INSERT OR REPLACE INTO failures (key, count, last, locked_until) VALUES (?, ?, ?, ?)",
                       (key, count, now, now + wait if wait else 0.0))
        return started

    def verify(self, name: str, password: str, client: str = "local") -> Actor:
        """Check a name and password; the signed-in `Actor` or SignInError/LockedOut.

        Args:
            name: account name as typed.
            password: as typed.
            client: the client's address: failures wait per (name, client) and per client, so a stranger
                elsewhere never keeps an account's owner out.
        Returns:
            Actor(name, role) of the enabled account.
        Raises:
            LockedOut while this (name, client) or this client must wait; SignInError otherwise, with
            `account` (the account's name, None for a name that is no account) and `locked_seconds`
            (the wait this failure started, 0 if none).
        """
        key_name = (name or "").strip().lower()[:128]
        client = client or "local"
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")  # one sign-in at a time: parallel guesses cannot outrun the counter
            try:
                row = db.execute("SELECT name, role, hash, disabled FROM users WHERE name = ?", (key_name,)).fetchone()
                account = row[0] if row else None
                who = account or "an unknown account name"   # a typed non-name is never written anywhere
                # ... not even in the counters: a name that is no account is counted under its hash
                pair = account or "#" + hashlib.sha256(key_name.encode()).hexdigest()[:16]
                keys = [f"pair:{pair}|{client}", f"client:{client}", f"user:{key_name}"]
                remaining = self._lock_remaining(db, keys[:2])
                if remaining > 0:
                    db.execute("COMMIT")
                    log.warning("sign-in refused for %s from %s: must wait %.0f s", who, client, remaining)
                    error = LockedOut(remaining)
                    error.account = account
                    raise error
                hasher, dummy_hash = _hasher()
                try:
                    hasher.verify(row[2] if row else dummy_hash, (password or "")[:MAX_PASSWORD])
                    ok = row is not None
                except (VerifyMismatchError, VerificationError, InvalidHashError):
                    ok = False
                if not ok or row[3]:
                    waits = self._fail(db, keys if account else keys[:2])
                    db.execute("COMMIT")
                    log.warning("failed sign-in for %s from %s%s", who, client,
                                f"; this account and client now wait {waits:.0f} s" if waits else "")
                    error = SignInError("this account is disabled; ask an administrator" if ok
                                        else "wrong account name or password")
                    error.account, error.locked_seconds = account, waits
                    raise error
                db.execute("DELETE FROM failures WHERE key IN (?, ?)", (keys[0], keys[2]))
                if hasher.check_needs_rehash(row[2]):   # made under another profile: moved to this one
                    db.execute("UPDATE users SET hash = ? WHERE name = ?", (hasher.hash(password), row[0]))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        log.info("%s signed in from %s", row[0], client)
        return Actor(row[0], row[1])

    def failures(self, key: str) -> int:
        """Failed sign-ins counted for 'user:NAME', 'pair:NAME|CLIENT' or 'client:ADDRESS'."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT count FROM failures WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    # First administrator --------------------------------------------------------------------------

    def setup_code_pending(self) -> bool:
        """True when an unused, unexpired setup code exists."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT expires, used FROM setup_code WHERE id = 1").fetchone()
        return bool(row) and not row[1] and row[0] > self.clock()

    def issue_setup_code(self, ttl: float = SETUP_TTL_SECONDS) -> str:
        """A new single-use code for creating the first administrator (replaces any earlier one).

        Returns:
            The code in clear, e.g. 'K7QF-2M9X-PD4R' (only its hash is stored).
        Raises:
            SetupError: an enabled administrator already exists.
        """
        if self.has_admin():
            raise SetupError("an administrator already exists; they add accounts on the Users page or with "
                             "`python -m pneumo_core users add`")
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off a terminal and typed
        code = "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(3))  # 60 bits
        with closing(self._connect()) as db:
            db.execute("INSERT OR REPLACE INTO setup_code (id, hash, expires, used) VALUES (1, ?, ?, 0)",
                       (_hasher()[0].hash(code), self.clock() + ttl))
        log.info("setup code issued, valid %.0f minutes", ttl / 60)
        return code

    def create_first_admin(self, code: str, name: str, password: str, client: str = "local") -> Actor:
        """Use the setup code to create the first administrator.

        Args:
            code: the code printed in the server's terminal (case and spaces ignored).
            name, password: the new administrator's account.
            client: rate-limited like a sign-in.
        Returns:
            Actor(name, 'admin').
        """
        name, password = check_name(name), check_password(password)
        keys = ["setup:code", f"client:{client or 'local'}"]
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                remaining = self._lock_remaining(db, keys)
                if remaining > 0:
                    db.execute("COMMIT")
                    raise LockedOut(remaining)
                if db.execute("SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0").fetchone():
                    raise SetupError("an administrator already exists; sign in instead")
                row = db.execute("SELECT hash, expires, used FROM setup_code WHERE id = 1").fetchone()
                typed = re.sub(r"\s+", "", (code or "").upper())[:64]
                try:
                    matches = bool(row) and _hasher()[0].verify(row[0], typed)
                except (VerifyMismatchError, VerificationError, InvalidHashError):
                    matches = False
                if not matches or row[2] or row[1] <= self.clock():
                    self._fail(db, keys)
                    db.execute("COMMIT")
                    log.warning("wrong, used or expired setup code from %s", client)
                    raise SetupError("the setup code is wrong, used or expired; restart the dashboard for a new "
                                     "one (printed in its terminal), or run `python -m pneumo_core users add NAME "
                                     "--role admin` on the server")
                now = _now_iso()
                db.execute("INSERT INTO users (name, role, hash, created, changed) VALUES (?, 'admin', ?, ?, ?)",
                           (name, _hasher()[0].hash(password), now, now))
                db.execute("UPDATE setup_code SET used = 1 WHERE id = 1")
                db.execute("DELETE FROM failures WHERE key = 'setup:code'")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        log.info("first administrator %s created with the setup code", name)
        return Actor(name, "admin")


def oidc_role(claims: dict, home: Path) -> str:
    """The role of a user signed in through OpenID Connect.

    From the `pneumo_role` claim if the provider sends one (a role name, or a list holding exactly
    one), else from `PNEUMO_HOME/oidc_roles.toml`:

        [roles]
        "ana.lopez@hospital.org" = "clinician"

    Args:
        claims: the ID token's claims (Streamlit's `st.user`).
        home: PNEUMO_HOME.
    Returns:
        A role of `access.ROLES`.
    Raises:
        SignInError: no email, or no role for this email (the default: no access).
    """
    email = str(claims.get("email") or "").strip().lower()
    if not email:
        raise SignInError("the identity provider sent no email address; Pneumo needs one to name you in its records")
    claim = claims.get(ROLE_CLAIM)
    granted = [r for r in ([claim] if isinstance(claim, str) else claim or []) if r in ROLES]
    if len(granted) == 1:
        return granted[0]
    path = Path(home) / OIDC_ROLES_FILE
    mapping = {}
    if path.is_file():
        try:
            mapping = {str(k).strip().lower(): v for k, v in tomllib.loads(path.read_text()).get("roles", {}).items()}
        except (tomllib.TOMLDecodeError, OSError, AttributeError) as error:
            log.error("%s cannot be read (%s); nobody gets a role from it", path, type(error).__name__)
    role = mapping.get(email)
    if role not in ROLES:
        raise SignInError(f"{email} has no role in Pneumo; an administrator must add it to {OIDC_ROLES_FILE} in "
                          f"PNEUMO_HOME (roles: {', '.join(ROLES)})")
    return role


def oidc_roles(home: Path) -> dict[str, str]:
    """The email -> role mapping of `oidc_roles.toml` ({} if there is none)."""
    path = Path(home) / OIDC_ROLES_FILE
    try:
        return dict(tomllib.loads(path.read_text()).get("roles", {})) if path.is_file() else {}
    except (tomllib.TOMLDecodeError, OSError):
        return {}
