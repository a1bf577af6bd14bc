"""A job's processes, known by pid *and* start time (psutil), and what they leave behind.

A pid reused after the runner died (or after a reboot) belongs to another program: its start time
differs, so it is never taken for the runner and never signalled. Stopping a job stops only the
processes that are still its own; the half-written output of a stopped training process (a
version folder not yet renamed, its tuner folder, a feature file) is found by its pid and removed.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil

from pneumo_core.learn import store
from pneumo_core.settings import Settings


def this_host() -> str:
    """This machine's name, recorded with each job's runner: its pid is checked here, its heartbeat elsewhere."""
    return socket.gethostname()


def start_time(pid: int | None) -> float | None:
    """When process `pid` started (seconds since the epoch, as psutil reports it), None if there is none."""
    if not pid:
        return None
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_ours(pid: int | None, started: float | None) -> bool:
    """Is `pid` still the live process that started at `started`? A reused pid (another program, after
    the runner died or a reboot) has another start time: not ours, never signalled."""
    if not pid or started is None:
        return False
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 0.1 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _signal_and_wait(send, watched: list[tuple[int, float]], grace: float) -> None:
    """`send(SIGTERM)`, wait up to `grace` s for the watched processes to end, then `send(SIGKILL)`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            send(sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(is_ours(p, s) for p, s in watched):
            time.sleep(0.05)
        if not any(is_ours(p, s) for p, s in watched):
            return


def stop_processes(pid: int | None, pid_started: float | None, child_pid: int | None,
                   child_started: float | None, grace: float) -> None:
    """Stop a job's runner (and its whole process group) and training process, only those that are
    still the processes the job started (pid and start time match); SIGKILL after `grace` s."""
    watched = [(p, s) for p, s in ((pid, pid_started), (child_pid, child_started)) if is_ours(p, s)]
    if not watched:
        return
    try:
        leads_group = is_ours(pid, pid_started) and os.getpgid(pid) == pid
    except ProcessLookupError:
        leads_group = False
    if leads_group:     # a background runner leads its own session: its group is the job's processes
        _signal_and_wait(lambda sig: os.killpg(pid, sig), watched, grace)
    else:               # a runner run by hand in a terminal, or a training process whose runner died
        def send(sig):
            for p, s in watched:
                if is_ours(p, s):
                    os.kill(p, sig)
        _signal_and_wait(send, watched, grace)


def reap_when_done(process: subprocess.Popen) -> None:
    """Collect a started runner's exit status in the background so it never lingers as a zombie."""
    threading.Thread(target=process.wait, daemon=True).start()


def remove_partial_output(settings: Settings, pid: int) -> list[Path]:
    """Delete the half-written output of training process `pid`.

    Args:
        settings: where the models, tuner runs and feature cache live.
        pid: the stopped (or failed) training process.
    Returns:
        What was removed: a version folder not yet renamed into the store, its tuner folder, and
        feature files not yet renamed into the cache.
    """
    removed = store.remove_partial(settings.models_dir, pid)
    leftovers = store.partial_tuner_runs(settings.tuner_dir, pid) + store.partial_cache_files(settings.cache_dir, pid)
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
