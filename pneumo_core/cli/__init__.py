"""The command line, `python -m pneumo_core ...`: the only place that prints.

`main` holds `main(argv)`, `parser()` and the one table of command groups (`COMMAND_GROUPS`);
each other module is one group: `train` (train, tune), `models` (evaluate, predict, cam, models,
promote), `jobs`, `pacs`, `audit`, `users`, `site`, `monitor`.
"""
