"""A job's options and the command line they become.

A job row holds its options (`params`): the fields of a TrainConfig for a `train` job, or the
site adaptation's `command`, `data`, `name` and `model`. This module checks them against
`settings.TRAIN_LIMITS`, brings a form's starting values into range, finds the options that
reproduce a model version, and spells them as the `python -m pneumo_core ...` command line the
runner starts. Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import fields

from pneumo_core.errors import ConfigError, JobError
from pneumo_core.settings import TRAIN_LIMITS, TrainConfig, option_name

# The options a job may set: the fields of TrainConfig (the one vocabulary); anything else is refused.
PARAMS = tuple(f.name for f in fields(TrainConfig))
SITE_ADAPT = ["site", "adapt"]     # params["command"] of a site adaptation job


def is_site_adapt(params: dict) -> bool:
    """Is this job row's params a site adaptation (else a `train` job)?"""
    return params.get("command") == SITE_ADAPT


def train_argv(config: TrainConfig) -> list[str]:
    """`train` command-line options that reproduce `config` (fine_tune_epochs=2 -> --fine-tune-epochs 2).

    Args:
        config: the training options.
    Returns:
        The options, without the command name.
    Raises:
        ConfigError when a field the command line has no option for differs from its default.
    """
    argv, defaults = [], TrainConfig().to_dict()
    for key, value in config.to_dict().items():
        flag = option_name(key)
        if flag is None:
            if value != defaults[key]:
                raise ConfigError(f"{key}={value!r} cannot be passed to `train` (no command-line option)")
        elif isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def site_adapt_argv(params: dict) -> list[str]:
    """The command line of a site adaptation job: `site adapt --data D --name N [--model M]`."""
    argv = [*SITE_ADAPT, "--data", str(params["data"]), "--name", str(params["name"])]
    return argv + (["--model", str(params["model"])] if params.get("model") else [])


def job_argv(params: dict, result_file: str | None = None) -> list[str]:
    """The pneumo_core command line of a job row's params.

    Args:
        params: the row's params: a site adaptation's (see `is_site_adapt`), else a TrainConfig's fields.
        result_file: where the command writes its result as JSON (`--result-file`); None: not asked for.
    Returns:
        `site adapt ...` or `train ...`, without `python -m pneumo_core`.
    """
    argv = site_adapt_argv(params) if is_site_adapt(params) else ["train", *train_argv(TrainConfig.from_dict(params))]
    return argv + (["--result-file", str(result_file)] if result_file else [])


def params_from_model(metadata: dict, data_dir: str) -> TrainConfig:
    """The training config that reproduces a model version on `data_dir` (the 'current settings').

    Args:
        metadata: the version's card (`metadata.json`).
        data_dir: the data folder to train on.
    Returns:
        The config; the weights file is found again by `auto`.
    """
    training = metadata.get("training", {})
    defaults = TrainConfig()
    weights = metadata.get("weights")
    # The card stores the weights file name only; `auto` finds it again in the weights dir.
    weights = "none" if weights is None else weights if weights == "imagenet" else "auto"
    same = ("trials", "epochs", "fine_tune_epochs", "seed", "tuner", "augmented_views", "ensemble", "tta_views")
    return TrainConfig(data_dir=str(data_dir), weights=weights,
                       backbone=metadata.get("backbone", defaults.backbone),
                       image_size=metadata.get("image_size", defaults.image_size),
                       normalisation=metadata.get("normalisation", defaults.normalisation),
                       **{k: training.get(k, getattr(defaults, k)) for k in same})


def check_params(params: dict) -> dict:
    """`params` if every option is one `train` has and every number is within `settings.TRAIN_LIMITS`.

    Raises JobError naming the first value out of range and the range allowed.
    """
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise JobError(f"unknown job option(s) {', '.join(unknown)}; options are {', '.join(PARAMS)}")
    for key, (low, high) in TRAIN_LIMITS.items():
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise JobError(f"{key.replace('_', ' ')} must be a whole number from {low} to {high}, not {value!r}")
        if not low <= value <= high:
            raise JobError(f"{key.replace('_', ' ')} {value} is out of range: a job may use {low} to {high}")
    return params


def clamp_params(params: dict) -> dict:
    """`params` with every bounded number moved into its `settings.TRAIN_LIMITS` range (a form's
    starting values: the active model may have been trained from a shell with more)."""
    return {k: min(max(v, TRAIN_LIMITS[k][0]), TRAIN_LIMITS[k][1])
            if k in TRAIN_LIMITS and isinstance(v, int) and not isinstance(v, bool) else v for k, v in params.items()}
