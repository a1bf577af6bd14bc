"""Command line: python -m pneumo_core train | tune | evaluate | predict | cam | models | promote."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .preprocessing import NORMALISATIONS
from .settings import TrainConfig, load_settings

def _parser(settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pneumo_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    # Backbone, tuner and CAM names are spelled out: their modules import TensorFlow, which would
    # make `--help` take seconds. tests/test_choices.py checks they match the modules.
    defaults = TrainConfig(data_dir=str(settings.data_dir), backbone=settings.backbone, weights=settings.weights,
                           image_size=settings.image_size, seed=settings.seed)
    train = commands.add_parser("train", help="train, evaluate and register a new model version",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--data", default=defaults.data_dir, help="dataset folder")
    train.add_argument("--backbone", default=defaults.backbone, choices=["mobilenet_v2", "resnet50", "efficientnet_b0"])
    train.add_argument("--weights", default=defaults.weights,
                       help="imagenet | none | PATH to a .h5 file | auto (local file if found, else imagenet)")
    train.add_argument("--trials", type=int, default=defaults.trials, help="tuner trials")
    train.add_argument("--epochs", type=int, default=defaults.epochs, help="max epochs per head")
    train.add_argument("--fine-tune-epochs", type=int, default=defaults.fine_tune_epochs)
    train.add_argument("--image-size", type=int, default=defaults.image_size)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--tuner", default=defaults.tuner, choices=["random", "hyperband", "bayesian"])
    train.add_argument("--views", type=int, default=defaults.augmented_views, help="augmented views per film")
    train.add_argument("--ensemble", type=int, default=defaults.ensemble, help="best configurations averaged")
    train.add_argument("--normalisation", default=defaults.normalisation, choices=NORMALISATIONS)

    tune = commands.add_parser("tune", help="search head hyper-parameters on cached features, alone or shared "
                               "by a chief and workers (Keras Tuner)",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for action in train._actions:  # the data, backbone and search options of train, shared (as argparse parents do)
        if action.dest not in ("help", "fine_tune_epochs", "ensemble"):
            tune._add_action(action)
    tune.add_argument("--distributed", choices=["chief", "worker"], default=settings.tuning_role,
                      help="role in a shared search; unset: from KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_IP")
    tune.add_argument("--oracle", default=settings.oracle or None, metavar="HOST:PORT",
                      help="the chief's oracle: where it listens (chief) or connects to (workers)")
    tune.add_argument("--tuner-id", default=settings.tuner_id, help="a worker's unique id; random if empty")
    tune.add_argument("--directory", default=str(settings.tuner_dir / "search"),
                      help="search folder; each tuner writes its own subfolder (the chief: summary.json)")
    train.add_argument("--strategy", default=defaults.strategy, choices=["default", "mirrored", "multiworker"],
                       help="fine-tuning on every local GPU (mirrored) or a TF_CONFIG cluster (multiworker)")
    train.add_argument("--mixed-precision", action="store_true", help="fine-tune in float16 compute (GPUs only)")
    train.add_argument("--xla", action="store_true", help="compile the fine-tuning step with XLA")

    model_help = "model version id or folder (default: the active model)"
    evaluate = commands.add_parser("evaluate", help="metrics of a model on a dataset split")
    evaluate.add_argument("--model", help=model_help)
    evaluate.add_argument("--data", default=str(settings.data_dir))
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser("predict", help="score images")
    predict.add_argument("--model", help=model_help)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--json", action="store_true")

    cam = commands.add_parser("cam", help="write a heatmap overlay of one image")
    cam.add_argument("--model", help=model_help)
    cam.add_argument("image", metavar="IMAGE")
    cam.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"])
    cam.add_argument("--out", required=True, help="output PNG file")
    cam.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity 0..1")

    models = commands.add_parser("models", help="list model versions")
    models.add_argument("--json", action="store_true")

    promote = commands.add_parser("promote", help="make a version the active model")
    promote.add_argument("version")
    return parser

def _load(settings, ref):
    from .model import PneumoModel
    from .registry import resolve
    return PneumoModel.load(resolve(settings.models_dir, ref))

def _train_config(args) -> TrainConfig:
    """The TrainConfig of a `train` or `tune` command line (options named as the fields, but for two)."""
    values = {{"data": "data_dir", "views": "augmented_views"}.get(k, k): v for k, v in vars(args).items()}
    return TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig) if f.name in values})

def cmd_train(args, settings) -> int:
    from .training import train
    train(_train_config(args), settings)
    return 0

def cmd_tune(args, settings) -> int:
    from .training import tune
    from .tuning import join_search
    tuner_id = join_search(args.distributed, args.oracle or "", args.tuner_id) if args.distributed else None
    directory = Path(args.directory)
    summary = tune(_train_config(args), settings, directory, tuner_id)
    if tuner_id in (None, "chief"):
        (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return 0

def cmd_evaluate(args, settings) -> int:
    from .data import load_dataset
    from .evaluation import evaluate
    model = _load(settings, args.model)
    split = model.metadata.get("data", {})
    dataset = load_dataset(args.data, split.get("val_fraction", 0.15), split.get("test_fraction", 0.15),
                           split.get("split_seed", 42), require_train=False)
    frame = dataset.split(args.split)
    if frame.empty:
        print(f"error: the {args.split} split of {args.data} has no images", file=sys.stderr)
        return 2
    result = evaluate(frame.label.to_numpy(), model.predict_files(frame.path), model.threshold)
    result = {"model": model.id, "split": args.split, "data": str(args.data), **result}
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("n", "roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "f1",
                    "threshold", "ece", "brier"):
            print(f"{key:>12}: {result[key]:.4f}" if isinstance(result[key], float) else f"{key:>12}: {result[key]}")
        print(f"{'confusion':>12}: [[tn, fp], [fn, tp]] = {result['confusion_matrix']}")
    return 0

def cmd_predict(args, settings) -> int:
    from .io import ImageError, read_image
    model = _load(settings, args.model)
    results, failed = [], False
    for path in args.images:
        try:
            gray = read_image(path)
        except ImageError as error:
            results.append({"path": path, "error": str(error)})
            failed = True
            continue
        p = float(model.predict([gray])[0])
        results.append({"path": path, "probability": p, "label": model.label(p), "threshold": model.threshold,
                        "model": model.id})
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['path']}: " + (f"error: {r['error']}" if "error" in r else
                                      f"{r['label']} (p={r['probability']:.3f}, threshold {r['threshold']:.3f})"))
    return 1 if failed else 0

def cmd_cam(args, settings) -> int:
    import cv2
    from .cam import make_cam, overlay, to_original_size
    from .io import read_image
    model = _load(settings, args.model)
    gray = read_image(args.image)
    maps, probability = make_cam(model.keras, args.method).explain(model.inputs([gray]))
    heatmap, p = to_original_size(maps[0], gray.shape), float(probability[0])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(overlay(gray, heatmap, args.alpha), cv2.COLOR_RGB2BGR)):
        print(f"error: cannot write {args.out} (use a .png name in a writable folder)", file=sys.stderr)
        return 2
    print(f"{args.out}: {args.method} for {model.label(p)} (p={p:.3f}, model {model.id})")
    return 0

def cmd_models(args, settings) -> int:
    from .registry import summaries
    rows = summaries(settings.models_dir)
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no model yet in {settings.models_dir}; train one with: python -m pneumo_core train")
    else:
        for r in rows:
            print(f"{'*' if r['active'] else ' '} {r['id']}  AUC {r['roc_auc']:.4f}  sens {r['sensitivity']:.3f}  "
                  f"spec {r['specificity']:.3f}  threshold {r['threshold']:.3f}")
    return 0

def cmd_promote(args, settings) -> int:
    from .registry import promote
    promote(settings.models_dir, args.version)
    print(f"active model: {args.version}")
    return 0

def main(argv=None) -> int:
    settings = load_settings()
    args = _parser(settings).parse_args(argv)
    from .backbones import WeightsError
    from .data import DatasetError
    from .io import ImageError
    from .registry import RegistryError
    try:
        return globals()[f"cmd_{args.command}"](args, settings)
    except (DatasetError, ImageError, WeightsError, RegistryError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
