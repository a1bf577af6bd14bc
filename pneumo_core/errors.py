"""One family of errors: what a user can act on.

Every error the library raises on purpose for a user's input, file, data, model or role is a
`PneumoError`; its message says what was wrong and what is accepted. The command line turns a
`PneumoError` into one line on stderr with exit code 2; any other exception is a bug and keeps
its traceback. (Modelled on keras-tuner's `errors.py`.)
"""
from __future__ import annotations


class PneumoError(Exception):
    """Base of every error Pneumo raises for a user to act on."""


class ConfigError(PneumoError, ValueError):
    """An unknown option value (backbone, tuner, CAM method, strategy, normalisation) or setting."""


class ImageError(PneumoError, ValueError):
    """A file that cannot be used as a chest film; the message names the file, the problem and what is accepted."""


class DatasetError(PneumoError, ValueError):
    """A dataset folder that cannot be trained or evaluated on."""


class WeightsError(PneumoError, ValueError):
    """Backbone weights that cannot be found or loaded."""


class RegistryError(PneumoError, LookupError):
    """No such model, no model at all, or a registry change that is refused; the message says what to do."""


class IntegrityError(RegistryError):
    """A model version (or a record) that is not what was recorded or signed: it is never served; the
    message names the file and says what to do."""


class JobError(PneumoError, ValueError):
    """A job that cannot be submitted, found, cancelled or run."""


class PermissionDenied(PneumoError, PermissionError):
    """The acting user's role does not allow the action."""


class AccountError(PneumoError, ValueError):
    """An account that cannot be added or changed: bad name, role or password, or no such account."""


class SignInError(PneumoError):
    """A sign-in refused: wrong name or password (never which of the two), a disabled account, or an
    identity-provider user with no role.

    Attributes:
        account: the existing account the refusal was for, None when the name typed is no account (what
            was typed is then never recorded: it may be a password typed in the wrong field).
        locked_seconds: set when this refusal started a wait for this account and client.
    """
    account: str | None = None
    locked_seconds: float = 0.0


class LockedOut(SignInError):
    """Too many failed sign-ins from this account or client; `seconds` until the next try."""

    def __init__(self, seconds: float):
        self.seconds = max(1, int(seconds + 0.999))
        super().__init__(f"too many failed sign-ins: try again in {self.seconds} s")


class SetupError(PneumoError):
    """The one-time setup code is wrong, used or expired, or an administrator already exists."""


class PacsError(PneumoError, RuntimeError):
    """The DICOM archive refused a request (wrong credentials, bad URL, unknown study); `status` is
    the HTTP status when there was one."""

    def __init__(self, message: str = "", status: int | None = None):
        super().__init__(message)
        self.status = status


class PacsUnavailable(PacsError, ConnectionError):
    """The DICOM archive cannot be reached now; the watcher retries with back-off and loses nothing."""
