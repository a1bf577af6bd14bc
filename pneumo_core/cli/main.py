"""Command line: python -m pneumo_core COMMAND [options]; `COMMAND --help` shows a command's options.

Every command belongs to one group module of `pneumo_core.cli`, and `COMMAND_GROUPS` below is the
one table of them: the parser (`--help`), the command list that ends this docstring and the
documentation's command reference are all built from it.

Commands:"""
from __future__ import annotations

import argparse
import logging
import sys

from pneumo_core.cli import audit, db, jobs, models, monitor, pacs, review, site, train, users
from pneumo_core.errors import PneumoError
from pneumo_core.files import keep_private
from pneumo_core.settings import Settings, load_settings

# The one table of commands, in the order `--help` lists them. Each group module has COMMANDS
# ({name: one-line help}) and add_commands(subparsers, settings), which adds exactly those.
COMMAND_GROUPS = (train, models, jobs, pacs, audit, users, site, monitor, review, db)


def command_help() -> dict[str, str]:
    """Every command of the command line and its one-line help, in `--help` order."""
    return {name: text for group in COMMAND_GROUPS for name, text in group.COMMANDS.items()}


__doc__ += "".join(f"\n  {name:<9} {text}" for name, text in command_help().items()) + "\n"


def parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line's parser, every command of `COMMAND_GROUPS` in it.

    Args:
        settings: give the options' defaults (data folder, backbone, PACS address...); default: `load_settings()`.
    Returns:
        The parser; a parsed command's `func(args, settings)` runs it and returns the exit status.
    """
    settings = settings or load_settings()
    command_line = argparse.ArgumentParser(prog="python -m pneumo_core", description=__doc__.splitlines()[0])
    commands = command_line.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(commands, settings)
    return command_line


def parse_args(argv: list[str] | None = None, settings: Settings | None = None) -> argparse.Namespace:
    """The parsed command line `argv` (default: sys.argv); argparse exits with code 2 on a bad one."""
    return parser(settings).parse_args(argv)


class _NoteFormatter(logging.Formatter):
    """The library's log records as the lines the command line always wrote: warnings as `note: ...`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"note: {text}" if record.levelno >= logging.WARNING else text


def _show_library_log() -> None:
    """The library's INFO and above on stderr (once per process; TensorFlow's own loggers untouched)."""
    log = logging.getLogger("pneumo_core")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_NoteFormatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run one command.

    Args:
        argv: the arguments after `python -m pneumo_core` (default: sys.argv).
    Returns:
        The exit status: the command's (0 when it did what was asked), 2 for an error a user can act on
        (printed as one line), 2 from argparse for a bad command line.
    """
    settings = load_settings()
    args = parse_args(argv, settings)
    _show_library_log()
    try:
        # Before anything is written: the home holds patient data (files 0600, folders 0700).
        keep_private(settings.home)
        return args.func(args, settings)
    # Only errors a user can act on become one line; anything else is a bug and keeps its traceback.
    except PneumoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
