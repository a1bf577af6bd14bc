"""The command line's help: one table lists every command, in --help and cli.main's docstring."""

import pytest


def _listed_commands(help_text: str) -> list[str]:
    """The subcommands a `--help` lists in its usage line's {a,b,c}."""
    start = help_text.index("{")
    return help_text[start + 1:help_text.index("}", start)].split(",")


def test_help_and_the_docstring_list_every_command_from_one_table(capsys):
    from pneumo_core.cli import main as cli
    table = cli.command_help()
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    assert exited.value.code == 0
    assert _listed_commands(help_text) == list(table)          # registered commands: the table's, in its order
    for name, text in table.items():
        assert f"\n  {name:<9} {text}" in cli.__doc__
        assert " ".join(text.split()) in " ".join(help_text.split())   # argparse wraps the lines
    assert set(table) >= {"train", "tune", "evaluate", "predict", "cam", "models", "promote", "jobs", "audit",
                          "users", "pacs", "site", "monitor"}                           # the README's commands
    parser = cli.parser()
    for group in ("jobs", "pacs", "audit", "users", "site"):      # each group's own subcommands, with their help
        with pytest.raises(SystemExit):
            parser.parse_args([group, "--help"])
        group_help = capsys.readouterr().out
        assert all(f"\n    {sub}" in group_help for sub in _listed_commands(group_help)), group_help
