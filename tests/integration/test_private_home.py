"""Patient data is the service account's alone: PNEUMO_HOME 0700, files 0600, whatever the login's umask."""
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from helpers import PASSWORD

from pneumo_core.files import current_umask, keep_private, new_file_mode, private_folder, restrict_umask


def _open_to_others(home: Path) -> list[str]:
    """Every path under `home` (itself included) that group or others may read, write or open."""
    paths = [home, *home.rglob("*")]
    return [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in paths
            if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077]


def _cli_under_umask_022(home: Path, *args, stdin: str = "") -> subprocess.CompletedProcess:
    """`python -m pneumo_core ARGS` started the way a login shell starts it: umask 022."""
    return subprocess.run([sys.executable, "-m", "pneumo_core", *args], cwd=REPO, input=stdin, text=True,
                          capture_output=True, timeout=300, env={**os.environ, "PNEUMO_HOME": str(home)},
                          preexec_fn=lambda: os.umask(0o022))


def test_a_fresh_home_under_umask_022_holds_nothing_others_can_read(tmp_path):
    home = tmp_path / "home"
    # Accounts (users.sqlite), the audit trail and promotions (audit.sqlite), the job queue, the PACS state.
    assert _cli_under_umask_022(home, "users", "add", "ann", "--role", "admin",
                                stdin=f"{PASSWORD}\n{PASSWORD}\n").returncode == 0
    for command in (["audit", "verify"], ["jobs", "list"], ["pacs", "status"]):
        result = _cli_under_umask_022(home, *command)
        assert "Traceback" not in result.stderr, result.stderr
    assert len(list(home.rglob("*.sqlite"))) >= 2
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert _open_to_others(home) == []


def test_an_existing_home_readable_by_others_is_tightened_with_a_warning(tmp_path, caplog):
    home = tmp_path / "home"
    (home / "pacs_outbox").mkdir(parents=True)
    result = home / "pacs_outbox" / "1.2.3.sr.dcm"
    result.write_bytes(b"Doe^Jane")
    for path, mode in ((home, 0o755), (home / "pacs_outbox", 0o755), (result, 0o644)):
        path.chmod(mode)
    before = os.umask(0o022)
    try:
        with caplog.at_level(logging.WARNING, logger="pneumo_core.files"):
            keep_private(home)
        assert current_umask() == 0o077 and new_file_mode() == 0o600 and new_file_mode(0o777) == 0o700
    finally:
        os.umask(before)
    assert _open_to_others(home) == []
    assert stat.S_IMODE(result.stat().st_mode) == 0o600
    assert "readable by other local users" in caplog.text and "3 files and folders" in caplog.text
    caplog.clear()
    keep_private(home)   # private now: left alone, no second warning
    assert "readable" not in caplog.text


def test_a_stricter_umask_is_kept_and_private_folder_tightens(tmp_path):
    before = os.umask(0o227)   # no write for the owner either: kept
    try:
        assert restrict_umask() == 0o227 and current_umask() == 0o277
    finally:
        os.umask(before)
    loose = tmp_path / "outbox"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    assert stat.S_IMODE(private_folder(loose).stat().st_mode) == 0o700


def test_a_trained_home_holds_nothing_others_can_read(trained_home):
    # Made by `train` through the command line from this (umask 022) test process: models, features, tuner, audit.
    assert (trained_home / "models").is_dir()
    assert _open_to_others(trained_home) == []
