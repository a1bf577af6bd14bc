"""`evaluate`, `predict`, `cam`, `models`, `promote` and `sign`: using, choosing and signing model versions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pneumo_core.choices import CAM_METHODS, SPLITS
from pneumo_core.settings import Settings, os_user

COMMANDS = {
    "evaluate": "metrics of a model on a dataset split",
    "predict": "score images",
    "cam": "write a heatmap overlay of one image",
    "models": "list model versions",
    "promote": "make a version the active model (an older one: a rollback)",
    "sign": "sign a model version with the Ed25519 key of whoever answers for models (or make a key pair)",
}
MODEL_HELP = "model version id or folder (default: the active model)"


def add_commands(commands, settings: Settings) -> None:
    """Add `evaluate`, `predict`, `cam`, `models`, `promote` and `sign` to the command line's subcommands."""
    evaluate = commands.add_parser("evaluate", help=COMMANDS["evaluate"])
    evaluate.set_defaults(func=cmd_evaluate)
    evaluate.add_argument("--model", help=MODEL_HELP)
    evaluate.add_argument("--data", dest="data_dir", default=str(settings.data_dir))
    evaluate.add_argument("--split", default="test", choices=SPLITS)
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser("predict", help=COMMANDS["predict"])
    predict.set_defaults(func=cmd_predict)
    predict.add_argument("--model", help=MODEL_HELP)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--json", action="store_true")

    cam = commands.add_parser("cam", help=COMMANDS["cam"])
    cam.set_defaults(func=cmd_cam)
    cam.add_argument("--model", help=MODEL_HELP)
    cam.add_argument("image", metavar="IMAGE")
    cam.add_argument("--method", default="gradcam", choices=CAM_METHODS)
    cam.add_argument("--out", required=True, help="output PNG file")
    cam.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity 0..1")

    models = commands.add_parser("models", help=COMMANDS["models"])
    models.set_defaults(func=cmd_models)
    models.add_argument("--json", action="store_true")

    promote = commands.add_parser("promote", help=COMMANDS["promote"])
    promote.set_defaults(func=cmd_promote)
    promote.add_argument("version")

    sign = commands.add_parser("sign", help=COMMANDS["sign"])
    sign.set_defaults(func=cmd_sign)
    sign.add_argument("version", nargs="?", help="the version id to sign")
    sign.add_argument("--key", help="the private key (PEM; default PNEUMO_SIGNING_KEY)")
    sign.add_argument("--new-key", metavar="PRIVATE", help="make a new key pair: the private key goes to PRIVATE "
                                                           "(0600, never overwritten), the public one to --public")
    sign.add_argument("--public", metavar="PUBLIC", help="with --new-key: where the public key goes "
                                                         "(the server's PNEUMO_VERIFY_KEY)")


def load_model(settings: Settings, ref: str | None):
    """The model version `ref` (id or folder; None: the active one), integrity checked and loaded (TensorFlow)."""
    from pneumo_core.serve.loading import load_version
    return load_version(settings.models_dir, ref, settings.verify_key)


def cmd_evaluate(args, settings) -> int:
    """Run `evaluate`: a model's figures on one split of a dataset. Returns the exit status."""
    from pneumo_core.errors import DatasetError
    from pneumo_core.evaluation.metrics import evaluate
    from pneumo_core.learn.data import load_dataset
    model = load_model(settings, args.model)
    split = model.metadata.get("data", {})
    dataset = load_dataset(args.data_dir, split.get("val_fraction", 0.15), split.get("test_fraction", 0.15),
                           split.get("split_seed", 42), require_train=False)
    frame = dataset.split(args.split)
    if frame.empty:
        raise DatasetError(f"the {args.split} split of {args.data_dir} has no images")
    result = evaluate(frame.label.to_numpy(), model.predict_files(frame.path), model.threshold)
    result = {"model": model.id, "split": args.split, "data": str(args.data_dir), **result}
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("n", "roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "f1",
                    "threshold", "ece", "brier"):
            print(f"{key:>12}: {result[key]:.4f}" if isinstance(result[key], float) else f"{key:>12}: {result[key]}")
        print(f"{'confusion':>12}: [[tn, fp], [fn, tp]] = {result['confusion_matrix']}")
    return 0


def cmd_predict(args, settings) -> int:
    """Run `predict`: score each image (each scored one audited). Returns 1 if any image failed, else 0."""
    from pneumo_core.imaging.films import read_each
    from pneumo_core.records.anchor import audit_trail
    from pneumo_core.serve.diagnosis import Diagnoser
    diagnoser = Diagnoser(load_model(settings, args.model))
    trail, who = audit_trail(settings), os_user()
    results, failed = [], False
    for path, film, error in read_each(args.images):
        if error:
            results.append({"path": path, "error": str(error)})
            failed = True
            continue
        d = diagnoser.diagnose(film.gray, Path(path).name, method=None, data=Path(path).read_bytes(), info=film.info)
        trail.record(d, source="cli", who=who)
        results.append({"path": path, "probability": d.probability, "label": d.label, "threshold": d.threshold,
                        "model": d.model_id, "ood_score": d.ood_score, "ood_flag": d.ood_flag,
                        "warnings": d.warnings, "sha256": d.sha256, "tier": d.tier,
                        "tier_guarantee": d.tier_guarantee})
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['path']}: " + (f"error: {r['error']}" if "error" in r else
                                      f"{r['label']} (p={r['probability']:.3f}, threshold {r['threshold']:.3f})"
                                      + (f"; tier {r['tier']}: {r['tier_guarantee']}" if r["tier"] else
                                         "; not validated at this site")
                                      + "".join(f"; caution: {w}" for w in r["warnings"])))
    return 1 if failed else 0


def cmd_cam(args, settings) -> int:
    """Run `cam`: write one image's heatmap overlay. Returns 2 when the file cannot be written, else 0."""
    import cv2

    from pneumo_core.explain.cam import make_cam, overlay, to_original_size
    from pneumo_core.imaging.films import read_image
    model = load_model(settings, args.model)
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
    """Run `models`: the registry's versions (* = active). Returns the exit status."""
    from pneumo_core.records.registry import summaries
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
    """Run `promote`: make a version active, recorded as the OS user. Returns the exit status."""
    from pneumo_core.records.access import cli_actor
    from pneumo_core.records.anchor import audit_trail
    from pneumo_core.records.registry import promote
    entry = promote(settings.models_dir, args.version, actor=cli_actor(), trail=audit_trail(settings))
    print(f"active model: {args.version} ({entry['action']} from {entry['from']}, by {entry['who']})")
    return 0


def cmd_sign(args, settings) -> int:
    """Run `sign`: sign a version (or make a key pair), recorded in the audit trail. Returns the exit status."""
    from pneumo_core.errors import ConfigError
    from pneumo_core.learn.store import check_version_id
    from pneumo_core.records.anchor import audit_trail
    from pneumo_core.records.signing import generate_keys, sign_version
    if args.new_key:
        if not args.public:
            raise ConfigError("--new-key needs --public FILE: where the server's public key goes")
        generate_keys(Path(args.new_key), Path(args.public))
        print(f"private key: {args.new_key} (keep it off the server; whoever holds it answers for the models)\n"
              f"public key: {args.public} (the server's PNEUMO_VERIFY_KEY, outside PNEUMO_HOME)")
        return 0
    key = Path(args.key) if args.key else settings.signing_key
    if not args.version or key is None:
        raise ConfigError("sign needs a VERSION and a key (--key FILE or PNEUMO_SIGNING_KEY); or --new-key to make one")
    record = sign_version(settings.models_dir / check_version_id(args.version), key)
    audit_trail(settings).event("model_signed", os_user(), source="cli", version=args.version,
                                files=record["files"], public_key=record["public_key"])
    print(f"signed {args.version}: " + ", ".join(f"{name} {digest[:12]}…" for name, digest in record["files"].items()))
    return 0
