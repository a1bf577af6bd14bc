"""`train` and `tune`: a new model version, or a search of head hyper-parameters alone."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pneumo_core.choices import TRAIN_CHOICES
from pneumo_core.progress import StreamReporter
from pneumo_core.settings import Settings, TrainConfig, option_name

COMMANDS = {
    "train": "train, evaluate and register a new model version",
    "tune": "search head hyper-parameters on cached features, alone or shared by a chief and workers (Keras Tuner)",
}


def default_config(settings: Settings) -> TrainConfig:
    """The training options' defaults: TrainConfig's, with what the settings (environment) set."""
    return TrainConfig(data_dir=str(settings.data_dir), backbone=settings.backbone, weights=settings.weights,
                       image_size=settings.image_size, seed=settings.seed)


def add_commands(commands, settings: Settings) -> None:
    """Add `train` and `tune` to the command line's subcommands."""
    defaults = default_config(settings)
    train = commands.add_parser("train", help=COMMANDS["train"], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_options(train, defaults)
    train.add_argument("--result-file", metavar="PATH",
                       help="also write the new version's id, folder, figures, threshold, whether it became active "
                            "and the seconds taken to PATH as JSON (written whole or not at all; what a job reads)")
    train.set_defaults(func=cmd_train)

    tune = commands.add_parser("tune", help=COMMANDS["tune"], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_options(tune, defaults, final_model=False)
    tune.set_defaults(func=cmd_tune)
    tune.add_argument("--distributed", choices=["chief", "worker"], default=settings.tuning_role,
                      help="role in a shared search; unset: from KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_IP")
    tune.add_argument("--oracle", default=settings.oracle or None, metavar="HOST:PORT",
                      help="the chief's oracle: where it listens (chief) or connects to (workers)")
    tune.add_argument("--tuner-id", default=settings.tuner_id, help="a worker's unique id; random if empty")
    tune.add_argument("--directory", default=str(settings.tuner_dir / "search"),
                      help="search folder; each tuner writes its own subfolder (the chief: summary.json)")


def add_train_options(parser: argparse.ArgumentParser, defaults: TrainConfig, final_model: bool = True) -> None:
    """The options of `train`, shared with `jobs submit`: one per TrainConfig field, stored under the field's
    name (`--data` -> data_dir), spelled as `settings.option_name` says, with the field's default.

    Args:
        parser: the command's parser.
        defaults: the options' defaults (`default_config`).
        final_model: False leaves out what only shapes the final model (ensemble, fine-tuning): `tune`'s options.
    """
    # Backbone, tuner and CAM names come from `choices`: their modules import TensorFlow, which would
    # make `--help` take seconds. tests/test_choices.py checks they match the modules.
    final_only = {"ensemble", "fine_tune_epochs", "strategy", "mixed_precision", "xla"}

    def option(field: str, **kwargs):
        if final_model or field not in final_only:
            flag = option_name(field)
            if field in TRAIN_CHOICES:
                kwargs["choices"] = TRAIN_CHOICES[field]
            elif "action" not in kwargs:   # shown as typed (--data DATA), not as the field (DATA_DIR)
                kwargs["metavar"] = flag.removeprefix("--").replace("-", "_").upper()
            parser.add_argument(flag, dest=field, default=getattr(defaults, field), **kwargs)

    option("data_dir", help="dataset folder")
    option("backbone")
    option("weights", help="imagenet | none | PATH to a .h5 file | auto (local file if found, else imagenet)")
    option("trials", type=int, help="tuner trials")
    option("epochs", type=int, help="max epochs per head")
    option("fine_tune_epochs", type=int)
    option("image_size", type=int)
    option("seed", type=int)
    option("tuner")
    option("augmented_views", type=int, help="augmented views per film")
    option("ensemble", type=int, help="best configurations averaged")
    option("tta_views", type=int, help="test-time augmented views the new version scores (0: plain film only)")
    option("normalisation")
    option("strategy", help="fine-tuning on every local GPU (mirrored) or a TF_CONFIG cluster (multiworker)")
    option("mixed_precision", action="store_true", help="fine-tune in float16 compute (GPUs only)")
    option("xla", action="store_true", help="compile the fine-tuning step with XLA")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a `train`, `tune` or `jobs submit` command line (options stored under field names)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    return TrainConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def cmd_train(args, settings) -> int:
    """Run `train`: a new version, saved and registered; its id printed last. Returns the exit status."""
    from pneumo_core.jobs.results import write_result
    from pneumo_core.learn.training import train
    from pneumo_core.records.registry import register
    result = train(train_config(args), settings, StreamReporter())
    if result is None:   # a worker of a multi-worker cluster: the chief registered the model
        return 0
    test = result.metrics["test"]
    print(f"test: AUC {test['roc_auc']:.4f}, accuracy {test['accuracy']:.3f}, sensitivity "
          f"{test['sensitivity']:.3f}, specificity {test['specificity']:.3f} at threshold {result.threshold:.3f}")
    print(f"saved {result.path} in {result.seconds:.0f}s")
    active = register(settings.models_dir, result.version_id, settings.signing_key)
    if not active:
        print(f"candidate: not active until promoted (python -m pneumo_core promote {result.version_id})")
    if args.result_file:
        write_result(args.result_file, version_id=result.version_id, version_path=result.path,
                     metrics=result.metrics, threshold=result.threshold, active=active, seconds=result.seconds)
    print(result.version_id, flush=True)   # last, alone on its line: for people and scripts (jobs read the file)
    return 0


def cmd_tune(args, settings) -> int:
    """Run `tune`: a head search; its summary printed as JSON. Returns the exit status."""
    from pneumo_core.learn.training import tune
    from pneumo_core.learn.tuning import join_search
    tuner_id = join_search(args.distributed, args.oracle or "", args.tuner_id) if args.distributed else None
    directory = Path(args.directory)
    summary = tune(train_config(args), settings, directory, tuner_id, StreamReporter())
    if tuner_id in (None, "chief"):
        (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return 0
