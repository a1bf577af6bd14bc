"""mkdocs hook: the reference pages, generated from the code at build time so they cannot drift from it.

A page holding one of these markers gets the generated text in its place:

- `<!-- generated: cli -->`: every command, sub-command and option of the argparse parser;
- `<!-- generated: settings -->`: the environment variables (`pneumo_core/settings.py`'s table, checked
  against the names its code reads), `TrainConfig`'s fields with their option, default and range, the
  augmentation and the memory budget;
- `<!-- generated: modules -->`: the package layout, each module with the first line of its docstring.

It also adds `api/<group>.md`, one page per subpackage (plus `base` for the top-level modules), each a
`::: module` block per module for mkdocstrings. A difference between the code and what the docs say
(a variable read but not described, a subpackage missing from the layers) is a warning, which fails
`mkdocs build --strict`. Only TensorFlow-free modules are imported (settings, choices, cli.main), from
this checkout; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import logging
import os
import re
import sys
import tokenize
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.gen_reference")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pneumo_core"

# Lowest first; a layer imports only from the layers above it in this list (docs/architecture.md).
LAYERS = [
    ("base", "errors, settings, choices, progress, files: no model, no screen, no network"),
    ("imaging", "reading films, preprocessing, augmentation, out-of-distribution detector"),
    ("evaluation", "metrics, figures, track record, triage tiers"),
    ("learn", "data, backbones, feature cache, model, training, tuning, distribution, the version-folder store"),
    ("explain", "Grad-CAM family, chest mask, faithfulness"),
    ("records", "registry, audit chain, users, access and sign-in policy, the database layer"),
    ("golive", "site data, validation and adaptation, version comparison, monitoring"),
    ("serve", "diagnosis, PDF report, DICOM SR / secondary capture"),
    ("pacs", "DICOMweb client, watcher, worklist state"),
    ("jobs", "queue, runner, process confinement"),
    ("cli", "`python -m pneumo_core ...`: the only place that prints"),
]
# Groups without an API page: the command line has its own generated reference.
NO_API_PAGE = {"cli"}

# What the generated defaults are computed under: the settings' own names instead of this machine's paths;
# usage lines wrapped to what fits the page's code blocks.
PLACEHOLDER_ENV = {"PNEUMO_HOME": "$PNEUMO_HOME", "PNEUMO_DATA": "$PNEUMO_DATA",
                   "PNEUMO_WEIGHTS_DIR": "$PNEUMO_WEIGHTS_DIR", "COLUMNS": "76"}
ENV_NAME = re.compile(r"^(PNEUMO|KERASTUNER)_[A-Z0-9_]+$")


def on_config(config):
    # This checkout's pneumo_core, not the one the virtual environment may have installed elsewhere.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return config


def on_files(files, config):
    for group, modules in module_groups().items():
        if group in NO_API_PAGE:
            continue
        title = "Base modules" if group == "base" else f"pneumo_core.{group}"
        blocks = "\n\n".join(f"::: {module}" for module, _ in modules)
        content = f"# {title}\n\n{layer_line(group)}\n\n{blocks}\n"
        files.append(File.generated(config, f"api/{group}.md", content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    generators = {"cli": cli_reference, "settings": settings_reference, "modules": modules_reference}
    for name, generate in generators.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown


# -- the package -----------------------------------------------------------------------------------

def layer_line(group: str) -> str:
    return dict(LAYERS).get(group, "")


def module_groups() -> dict[str, list[tuple[str, str]]]:
    """{group: [(dotted module name, first docstring line)]}, groups in layer order, read with ast (no import)."""
    groups: dict[str, list[tuple[str, str]]] = {name: [] for name, _ in LAYERS}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py") or "__pycache__" in relative.parts:
            continue
        if "migrations" in relative.parts and (path.name == "env.py" or "versions" in relative.parts):
            continue    # Alembic's scripts, run by Alembic and never imported (a revision's name is no identifier)
        group = relative.parts[0] if len(relative.parts) > 1 else "base"
        if group not in groups:
            log.warning(f"pneumo_core/{group}/ is in no layer: add it to LAYERS in docs/gen_reference.py "
                        "and to docs/architecture.md")
            groups[group] = []
        dotted = "pneumo_core." + ".".join(relative.with_suffix("").parts)
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not docstring:
            log.warning(f"{dotted} has no module docstring (the layout table and API page show its first line)")
        groups[group].append((dotted, docstring.strip().split("\n")[0]))
    return {name: modules for name, modules in groups.items() if modules}


def modules_reference() -> str:
    lines = ["| layer | module | what it is |", "|---|---|---|"]
    for group, modules in module_groups().items():
        for index, (module, summary) in enumerate(modules):
            lines.append(f"| {f'**{group}**' if index == 0 else ''} | `{module}` | {cell(summary)} |")
    return "\n".join(lines)


def sentences(*parts: str) -> str:
    """Non-empty parts joined by "; ", each as written (help text reads as `--help` prints it)."""
    return "; ".join(part.strip().rstrip(".") for part in parts if part and part.strip())


def cell(text) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


# -- command line ----------------------------------------------------------------------------------

@contextlib.contextmanager
def placeholder_environment():
    """os.environ without the deployment's PNEUMO_* / KERASTUNER_* values, the paths as their setting names."""
    saved = dict(os.environ)
    for name in [name for name in os.environ if ENV_NAME.match(name)]:
        del os.environ[name]
    os.environ.update(PLACEHOLDER_ENV)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def cli_parser() -> argparse.ArgumentParser:
    """The parser the command-line reference is generated from (called inside `placeholder_environment()`, so
    settings read from os.environ give placeholder defaults)."""
    from pneumo_core.cli import main
    return main.parser()


def cli_reference() -> str:
    with placeholder_environment():
        parser = cli_parser()
        out: list[str] = []
        for words, command, summary in walk(parser, [], ""):
            if words:
                out.append(f"{'#' * min(len(words) + 1, 4)} `{' '.join(words)}`\n")
            if summary:
                out.append(summary[0].upper() + summary[1:].rstrip(".") + ".\n")
            out.append(f"```text\n{command.format_usage().strip()}\n```\n")
            out.append(options_table(command))
    return "\n".join(part for part in out if part)


def walk(parser: argparse.ArgumentParser, words: list[str], summary: str):
    """(command words, parser, help line) for this parser and every sub-command under it, depth first."""
    yield words, parser, summary
    for action in parser._actions:   # argparse has no public way to list a parser's arguments
        if action.nargs == argparse.PARSER:
            helps = {choice.dest: choice.help for choice in getattr(action, "_choices_actions", [])}
            for name, subparser in action.choices.items():
                yield from walk(subparser, [*words, name], expand(helps.get(name) or "", {}))


def expand(text: str, values: dict) -> str:
    """A help string as argparse prints it (`%(default)s` filled in, `%%` as `%`)."""
    try:
        return text % values
    except (KeyError, TypeError, ValueError):
        return text


def options_table(parser: argparse.ArgumentParser) -> str:
    rows = []
    for action in parser._actions:
        if "-h" in action.option_strings or action.nargs == argparse.PARSER:
            continue
        name = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.choices:
            value = " ".join(f"`{choice}`" for choice in action.choices)
        elif action.nargs == 0:
            value = "(flag)"
        else:
            value = f"`{action.metavar or action.dest.upper()}`" if action.option_strings else ""
            if action.type is not None and getattr(action.type, "__name__", "") in ("int", "float"):
                value += f" ({action.type.__name__})"
        if action.nargs in ("+", "*"):
            value += " (one or more)" if action.nargs == "+" else " (any number)"
        if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
            default = "required"
        elif action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS):
            default = ""
        else:
            default = f"`{action.default}`"
        help_text = sentences(expand(action.help or "", {**vars(action), "prog": parser.prog}))
        rows.append(f"| {name} | {cell(value)} | {cell(default)} | {cell(help_text)} |")
    if not rows:
        return ""
    return "| option | value | default | what it does |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


# -- settings --------------------------------------------------------------------------------------

def settings_reference() -> str:
    from pneumo_core import settings
    with placeholder_environment():
        train_help = {action.dest: action.help for action in command(cli_parser(), "train")._actions}
    return "\n\n".join([
        "## Environment variables\n\nRead once by `load_settings()`; the table is the module docstring of "
        "`pneumo_core/settings.py`, checked at build time against the names its code reads.\n",
        environment_table(settings),
        "## Training options (`TrainConfig`)\n\nThe same names everywhere: `train`'s options, the fields of "
        "`TrainConfig` and a job's stored config. Ranges are `TRAIN_LIMITS` (what a queued job may ask for); "
        "choices are `choices.TRAIN_CHOICES`. Options marked *code only* have no command-line flag.\n",
        train_config_table(settings, train_help),
        "## Augmentation (`Augmentation`)\n\nHow strong the random training views are "
        "(`TrainConfig.augmentation`, applied by `imaging.augment.random_view`).\n",
        fields_table(settings.Augmentation, {}),
        "## Memory budget (`MemoryBudget`)\n\nEvery limit that bounds what one dashboard process holds; "
        "the variables named here override the default (see [Memory and load](../memory.md)).\n",
        fields_table(settings.MemoryBudget, budget_variables(settings)),
    ])


def command(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for words, subparser, _ in walk(parser, [], ""):
        if words == [name]:
            return subparser
    raise LookupError(f"the command line has no `{name}` command")


def environment_table(settings) -> str:
    source = Path(settings.__file__).read_text()
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree) or ""
    documented = set(re.findall(r"\b(?:PNEUMO|KERASTUNER)_[A-Z0-9_]+\b", docstring))
    read = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and ENV_NAME.match(node.value)}
    for name in sorted(read - documented):
        log.warning(f"pneumo_core/settings.py reads {name} but its docstring's table does not describe it")
    # A few variables are read where they are used, not by load_settings (the shared database's URL is a
    # secret kept out of Settings, in records/db.py): described in the one table, read somewhere in the package.
    package = Path(settings.__file__).parent
    read_anywhere = read | {node.value for module in package.rglob("*.py") for node in ast.walk(ast.parse(
        module.read_text())) if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and ENV_NAME.match(node.value)}
    for name in sorted(documented - read_anywhere):
        log.warning(f"pneumo_core/settings.py's docstring describes {name}, which no code of pneumo_core reads")
    rows: list[list[str]] = []
    for line in docstring.splitlines():
        if not line.startswith("|") or set(line) <= set("|-"):
            continue
        names, text = (part.strip() for part in line.strip().strip("|").split("|", 1))
        if names == "variable":
            continue
        continues_names = bool(rows) and rows[-1][0].endswith(",")
        if names and not continues_names:
            rows.append([names, text])
        else:
            rows[-1][0] = f"{rows[-1][0]} {names}".strip()
            rows[-1][1] = f"{rows[-1][1]} {text}".strip()
    lines = ["| variable | default and meaning |", "|---|---|"]
    for names, text in rows:
        variables = ", ".join(f"`{name.strip()}`" for name in names.split(",") if name.strip())
        lines.append(f"| {variables} | {cell(text)} |")
    return "\n".join(lines)


def source_comments(cls) -> dict[str, str]:
    """{field: the comment beside it and the comment lines just above it} in a class's source."""
    import inspect
    lines, _ = inspect.getsourcelines(cls)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"\s+(\w+)\s*:\s*[^=]", line)
        if not match:
            continue
        above, previous = [], number - 1
        while previous in comments and lines[previous - 1].lstrip().startswith("#"):
            above.insert(0, comments[previous])
            previous -= 1
        beside = comments.get(number, "") if not line.lstrip().startswith("#") else ""
        found[match.group(1)] = " ".join(part for part in [*above, beside] if part)
    return found


def train_config_table(settings, train_help: dict) -> str:
    from pneumo_core.choices import TRAIN_CHOICES
    defaults, comments = settings.TrainConfig(), source_comments(settings.TrainConfig)
    lines = ["| field | option | type | default | allowed | what it does |", "|---|---|---|---|---|---|"]
    for field in dataclasses.fields(settings.TrainConfig):
        option = settings.option_name(field.name)
        value = getattr(defaults, field.name)
        default = "see Augmentation" if dataclasses.is_dataclass(value) else f"`{value!r}`"
        if field.name in TRAIN_CHOICES:
            allowed = " ".join(f"`{choice}`" for choice in TRAIN_CHOICES[field.name])
        elif field.name in settings.TRAIN_LIMITS:
            low, high = settings.TRAIN_LIMITS[field.name]
            allowed = f"{low} to {high:,}"
        else:
            allowed = ""
        text = sentences(expand(train_help.get(field.name) or "", {}), comments.get(field.name, ""))
        lines.append(f"| `{field.name}` | {f'`{option}`' if option else '*code only*'} | `{field.type}` | "
                     f"{default} | {allowed} | {cell(text)} |")
    return "\n".join(lines)


def budget_variables(settings) -> dict[str, str]:
    """{MemoryBudget field: "`VARIABLE` (default in the variable's unit)"}, read from `memory_budget`'s calls
    `number(VARIABLE, default.FIELD, scale)`."""
    import inspect
    tree = ast.parse(inspect.getsource(settings.memory_budget).lstrip())
    defaults, found = settings.MemoryBudget(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and isinstance(node.value, ast.Call) and node.value.args:
            first = node.value.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and ENV_NAME.match(first.value):
                scale_node = node.value.args[2] if len(node.value.args) > 2 else ast.Constant(1)
                # The scale is a number written in the code (1_000_000, 2 ** 20): evaluated without names.
                scale = eval(compile(ast.fix_missing_locations(ast.Expression(scale_node)), "<scale>", "eval"),
                             {"__builtins__": {}})
                found[node.arg] = f"`{first.value}` ({getattr(defaults, node.arg) / scale:g})"
    return found


def fields_table(cls, variables: dict[str, str]) -> str:
    defaults, comments = cls(), source_comments(cls)
    header = ("| field | default | variable (its default) | what it bounds or means |\n|---|---|---|---|"
              if variables else "| field | default | what it means |\n|---|---|---|")
    lines = [header]
    for field in dataclasses.fields(cls):
        value = getattr(defaults, field.name)
        default = f"`{value:,}`" if isinstance(value, int) and not isinstance(value, bool) else f"`{value!r}`"
        variable = variables.get(field.name, "")
        text = cell(sentences(comments.get(field.name, "")))
        lines.append(f"| `{field.name}` | {default} | {variable} | {text} |" if variables else
                     f"| `{field.name}` | {default} | {text} |")
    return "\n".join(lines)
