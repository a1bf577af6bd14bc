"""Who may read what Pneumo writes: PNEUMO_HOME and everything in it belong to the service account alone.

The home holds patient data: PACS results waiting in the outbox (a patient's name and MRN in
their headers), the audit trail, the PACS state, reviewed films. A login's usual umask (022)
would leave them readable by every local user, so each entry point (the command line, which
also runs jobs and the PACS watcher, and the dashboard) calls `keep_private(home)` first:

- the process umask becomes 077: new files 0600, new folders 0700, whoever creates them
  (SQLite's -wal/-shm files, Keras, pandas, TensorFlow included);
- the home is created 0700; an existing home readable by others is tightened (the home and
  everything under it lose their group and other bits) with a warning in the log.

`private_folder` and `new_file_mode` serve code that creates folders or sets a mode itself.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077   # group and others: no read, no write, no search


def restrict_umask() -> int:
    """Make new files 0600 and new folders 0700 in this process and the processes it starts.

    A stricter umask already in place is kept (only bits are added).
    Returns:
        The umask before the call.
    """
    before = os.umask(PRIVATE_UMASK)
    os.umask(before | PRIVATE_UMASK)
    return before


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells (/proc), else by a set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(PRIVATE_UMASK)
    os.umask(mask)
    return mask


def new_file_mode(mode: int = 0o666) -> int:
    """`mode` as the umask leaves it, for a file whose mode is set by hand (e.g. after `mkstemp`'s 0600).

    Args:
        mode: the widest mode wanted (0o666 a file, 0o777 a folder).
    Returns:
        mode without the umask's bits: 0o600 for a file under `restrict_umask`, 0o644 under 022.
    """
    return mode & ~current_umask()


def private_folder(path: Path) -> Path:
    """Create `path` (and missing parents) as a folder only its owner can open; tighten it if it exists.

    Returns:
        The path.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & PRIVATE_UMASK:
        path.chmod(mode & ~PRIVATE_UMASK)
    return path


def tighten(root: Path) -> int:
    """Remove group and other permissions from `root` and everything under it (links are not followed).

    Returns:
        How many files and folders were changed.
    """
    changed = 0
    for folder, names, files in os.walk(root):
        for path in [Path(folder)] + [Path(folder) / name for name in files]:
            try:
                info = path.lstat()
            except OSError:   # removed meanwhile (a cache eviction, a finished upload)
                continue
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode) or not mode & PRIVATE_UMASK:
                continue
            try:
                path.chmod(mode & ~PRIVATE_UMASK)
                changed += 1
            except OSError as error:   # a file of another owner: say so, keep going
                log.warning("could not make %s private: %s", path, error.strerror)
        names[:] = [n for n in names if not (Path(folder) / n).is_symlink()]
    return changed


def private_home(home: Path) -> Path:
    """PNEUMO_HOME as a folder only the service account can open.

    A new home is created 0700. An existing one that group or others could open is tightened, the
    files in it too, with a warning (once: afterwards the home is private and is left alone).
    Returns:
        The home.
    """
    home = Path(home)
    if home.is_dir() and stat.S_IMODE(home.stat().st_mode) & PRIVATE_UMASK:
        changed = tighten(home)
        log.warning("PNEUMO_HOME %s was readable by other local users (patient data): made it and %d files and "
                    "folders in it private to %s (mode 0700 / 0600)", home, changed, _owner())
    return private_folder(home)


def keep_private(home: Path) -> Path:
    """What every entry point calls first: `restrict_umask`, then `private_home(home)`.

    Returns:
        The home.
    """
    restrict_umask()
    return private_home(home)


def _owner() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "this account"
