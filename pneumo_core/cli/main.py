"""Command line: python -m pneumo_core train | tune | evaluate | predict | cam | models | promote."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from pneumo_core.choices import CAM_METHODS, SPLITS, TRAIN_CHOICES
from pneumo_core.errors import PneumoError
from pneumo_core.progress import StreamReporter
from pneumo_core.settings import TrainConfig, load_settings, option_name, os_user


def _parser(settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pneumo_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    # Backbone, tuner and CAM names come from `choices`: their modules import TensorFlow, which would
    # make `--help` take seconds. tests/test_choices.py checks they match the modules.
    defaults = TrainConfig(data_dir=str(settings.data_dir), backbone=settings.backbone, weights=settings.weights,
                           image_size=settings.image_size, seed=settings.seed)
    train = commands.add_parser("train", help="train, evaluate and register a new model version",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_options(train, defaults)
    train.set_defaults(func=cmd_train)

    tune = commands.add_parser("tune", help="search head hyper-parameters on cached features, alone or shared "
                               "by a chief and workers (Keras Tuner)",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_options(tune, defaults, final_model=False)
    tune.set_defaults(func=cmd_tune)
    tune.add_argument("--distributed", choices=["chief", "worker"], default=settings.tuning_role,
                      help="role in a shared search; unset: from KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_IP")
    tune.add_argument("--oracle", default=settings.oracle or None, metavar="HOST:PORT",
                      help="the chief's oracle: where it listens (chief) or connects to (workers)")
    tune.add_argument("--tuner-id", default=settings.tuner_id, help="a worker's unique id; random if empty")
    tune.add_argument("--directory", default=str(settings.tuner_dir / "search"),
                      help="search folder; each tuner writes its own subfolder (the chief: summary.json)")

    model_help = "model version id or folder (default: the active model)"
    evaluate = commands.add_parser("evaluate", help="metrics of a model on a dataset split")
    evaluate.set_defaults(func=cmd_evaluate)
    evaluate.add_argument("--model", help=model_help)
    evaluate.add_argument("--data", dest="data_dir", default=str(settings.data_dir))
    evaluate.add_argument("--split", default="test", choices=SPLITS)
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser("predict", help="score images")
    predict.set_defaults(func=cmd_predict)
    predict.add_argument("--model", help=model_help)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--json", action="store_true")

    cam = commands.add_parser("cam", help="write a heatmap overlay of one image")
    cam.set_defaults(func=cmd_cam)
    cam.add_argument("--model", help=model_help)
    cam.add_argument("image", metavar="IMAGE")
    cam.add_argument("--method", default="gradcam", choices=CAM_METHODS)
    cam.add_argument("--out", required=True, help="output PNG file")
    cam.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity 0..1")

    models = commands.add_parser("models", help="list model versions")
    models.set_defaults(func=cmd_models)
    models.add_argument("--json", action="store_true")

    promote = commands.add_parser("promote", help="make a version the active model (an older one: a rollback)")
    promote.set_defaults(func=cmd_promote)
    promote.add_argument("version")

    jobs = commands.add_parser("jobs", help="retraining jobs run in the background, one at a time")
    jobs.set_defaults(func=cmd_jobs)
    job_commands = jobs.add_subparsers(dest="job_command", required=True)
    submit = job_commands.add_parser("submit", help="check the data, queue a train job and print its id",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_options(submit, defaults)
    job_list = job_commands.add_parser("list", help="jobs, newest first")
    job_list.add_argument("--json", action="store_true")
    status = job_commands.add_parser("status", help="state and progress of one job")
    status.add_argument("id", type=int)
    status.add_argument("--json", action="store_true")
    job_commands.add_parser("cancel", help="stop a queued or running job").add_argument("id", type=int)
    wait = job_commands.add_parser("wait", help="wait for a job to finish; exit 0 if it succeeded")
    wait.add_argument("id", type=int)
    wait.add_argument("--timeout", type=float, help="give up after this many seconds (exit 3)")
    job_commands.add_parser("run", help="run a queued job in the foreground (what the background runner "
                                        "does)").add_argument("id", type=int)
    _add_pacs_parser(commands, settings)
    _add_audit_parser(commands, settings)
    _add_users_parser(commands, settings)
    _add_site_parser(commands, settings)
    _add_monitor_parser(commands, settings)
    return parser


def _add_train_options(parser: argparse.ArgumentParser, defaults: TrainConfig, final_model: bool = True) -> None:
    """The options of `train`, shared with `jobs submit`: one per TrainConfig field, stored under the field's
    name (`--data` -> data_dir), spelled as `settings.option_name` says, with the field's default.

    `final_model=False` leaves out what only shapes the final model (ensemble, fine-tuning): `tune`'s options.
    """
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


def _load(settings, ref):
    from pneumo_core.learn.model import PneumoModel
    from pneumo_core.records.registry import resolve
    return PneumoModel.load(resolve(settings.models_dir, ref))

def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a `train`, `tune` or `jobs submit` command line (options stored under field names)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    return TrainConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})

def cmd_train(args, settings) -> int:
    from pneumo_core.learn.training import train
    result = train(train_config(args), settings, StreamReporter())
    if result is None:   # a worker of a multi-worker cluster: the chief registered the model
        return 0
    test = result.metrics["test"]
    print(f"test: AUC {test['roc_auc']:.4f}, accuracy {test['accuracy']:.3f}, sensitivity "
          f"{test['sensitivity']:.3f}, specificity {test['specificity']:.3f} at threshold {result.threshold:.3f}")
    print(f"saved {result.path} in {result.seconds:.0f}s")
    from pneumo_core.records.registry import register
    if not register(settings.models_dir, result.version_id):
        print(f"candidate: not active until promoted (python -m pneumo_core promote {result.version_id})")
    print(result.version_id, flush=True)   # last: the job runner and scripts read the id from the last line
    return 0

def cmd_tune(args, settings) -> int:
    from pneumo_core.learn.training import tune
    from pneumo_core.learn.tuning import join_search
    tuner_id = join_search(args.distributed, args.oracle or "", args.tuner_id) if args.distributed else None
    directory = Path(args.directory)
    summary = tune(train_config(args), settings, directory, tuner_id, StreamReporter())
    if tuner_id in (None, "chief"):
        (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return 0

def cmd_evaluate(args, settings) -> int:
    from pneumo_core.errors import DatasetError
    from pneumo_core.evaluate.metrics import evaluate
    from pneumo_core.learn.data import load_dataset
    model = _load(settings, args.model)
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
    from pneumo_core.errors import ImageError
    from pneumo_core.imaging.films import read_film
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.serve.diagnosis import Diagnoser
    diagnoser = Diagnoser(_load(settings, args.model))
    trail, who = AuditTrail(settings.audit_path), os_user()
    results, failed = [], False
    for path in args.images:
        try:
            film = read_film(path)
        except ImageError as error:
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
    import cv2

    from pneumo_core.explain.cam import make_cam, overlay, to_original_size
    from pneumo_core.imaging.films import read_image
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
    from pneumo_core.records.access import cli_actor
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.records.registry import promote
    entry = promote(settings.models_dir, args.version, actor=cli_actor(), trail=AuditTrail(settings.audit_path))
    print(f"active model: {args.version} ({entry['action']} from {entry['from']}, by {entry['who']})")
    return 0


def cmd_jobs(args, settings) -> int:
    from pneumo_core.jobs.queue import FINISHED, JobQueue
    from pneumo_core.records.access import cli_actor
    queue = JobQueue(settings)
    if args.job_command == "submit":
        job_id = queue.submit(train_config(args), actor=cli_actor())
        print(job_id)   # the data check runs in the job: see `jobs status ID`
        return 0
    if args.job_command == "list":
        jobs = queue.list()
        if args.json:
            print(json.dumps(jobs))
        for job in [] if args.json else jobs:
            print(f"{job['id']:>4}  {job['state']:<9}  {job['submitted']}  {job['percent']:5.1f}%  "
                  f"{job['stage'] or '':<24}  {job['model_id'] or ''}")
        return 0
    if args.job_command == "status":
        job = queue.get(args.id)
        if args.json:
            print(json.dumps(job))
        else:
            print(f"job {job['id']}: {job['state']}, {job['percent']:.0f}% {job['stage'] or ''} {job['step'] or ''}"
                  + (f"\nmodel: {job['model_id']}" if job["model_id"] else "")
                  + (f"\n{job['error']}" if job["error"] else ""))
        return 0
    if args.job_command == "cancel":
        print(f"job {args.id}: {queue.cancel(args.id, actor=cli_actor())['state']}")
        return 0
    if args.job_command == "wait":
        job = queue.wait(args.id, args.timeout)
        print(f"job {job['id']}: {job['state']}" + (f", model {job['model_id']}" if job["model_id"] else "")
              + (f"\n{job['error']}" if job["error"] and job["state"] == "failed" else ""))
        return 0 if job["state"] == "succeeded" else 3 if job["state"] not in FINISHED else 1
    return queue.run(args.id)


# --- pacs: the DICOMweb round trip (pneumo_core/pacs.py) ---------------------------------------
def _add_pacs_parser(commands, settings) -> None:
    pacs = commands.add_parser("pacs", help="score new chest films of a DICOM archive (DICOMweb) and store the "
                                            "results back as DICOM SR + heatmap")
    pacs.set_defaults(func=cmd_pacs)
    sub = pacs.add_subparsers(dest="pacs_command", required=True)
    url_help = "the archive's DICOMweb root, e.g. http://pacs:8042/dicom-web (default: PNEUMO_PACS_URL)"
    watch = sub.add_parser("watch", help="poll the archive for new CR/DX/DR chest films and score them",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    watch.add_argument("--url", default=settings.pacs_url or None, help=url_help)
    watch.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    watch.add_argument("--once", action="store_true", help="one poll, then exit")
    watch.add_argument("--lookback-days", type=int, default=7, help="how far back the first poll looks")
    score = sub.add_parser("score", help="score the chest films of one study now")
    score.add_argument("study", metavar="STUDY_UID")
    score.add_argument("--url", default=settings.pacs_url or None, help=url_help)
    for command in (watch, score):
        command.add_argument("--model", help="model version id or folder (default: the active model)")
        command.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"],
                             help="heatmap method")
    status = sub.add_parser("status", help="last poll, backlog and errors of the watcher")
    status.add_argument("--json", action="store_true")


def cmd_pacs(args, settings) -> int:
    from pneumo_core.pacs.watcher import PacsClient, PacsState, Watcher, outbox_dir
    from pneumo_core.records.audit import AuditTrail
    state = PacsState(settings.pacs_state_path)
    if args.pacs_command == "status":
        report = state.status()
        if args.json:
            print(json.dumps(report))
        else:
            print(f"archive {report['url'] or '(never polled)'}, model {report['model']}, last poll "
                  f"{report['last_poll']}, backlog {report['backlog']}, counts {report['counts']}"
                  + (f"\nlast error {report['last_error_time']}: {report['last_error']}"
                     if report["last_error"] else ""))
        return 0
    from pneumo_core.serve.diagnosis import Diagnoser
    client = PacsClient.from_settings(settings, args.url)
    watcher = Watcher(client, Diagnoser(_load(settings, args.model)), state, AuditTrail(settings.audit_path),
                      outbox_dir(settings), who=os_user(), method=args.method,
                      lookback_days=getattr(args, "lookback_days", 7))
    def show(summary, always=True):   # a quiet archive prints nothing between polls; `pacs status` says when
        if always or any(summary[k] for k in ("new", "stored", "failed")):
            print(json.dumps({"time": state.get_meta("last_poll"), **summary}), flush=True)
    if args.pacs_command == "score":
        show(watcher.poll(study_uid=args.study))
        return 0
    try:
        watcher.run(args.interval, once=args.once, on_poll=lambda summary: show(summary, args.once),
                    max_failures=8 if args.once else None)
    except KeyboardInterrupt:
        print("stopped; a restart resumes where this one stopped", file=sys.stderr)
    return 0
# --- end pacs ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None, settings=None) -> argparse.Namespace:
    """The parsed command line `argv` (default: sys.argv); argparse exits with code 2 on a bad one."""
    return _parser(settings or load_settings()).parse_args(argv)


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


# -- audit: records that changes cannot hide ----------------------------------------------------------

def _add_audit_parser(commands, settings) -> None:
    audit = commands.add_parser("audit", help="the audit trail: check that no record was changed or deleted")
    audit.set_defaults(func=cmd_audit)
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the hash chains of the audit trail and of the promotions; "
                                             "exit 1 naming the first broken link, 0 when intact")


def cmd_audit(args, settings) -> int:
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.records.registry import verify_promotions
    if not settings.audit_path.is_file():
        print(f"no audit trail yet at {settings.audit_path}")
        trail_result = {"ok": True, "rows": {}, "last": {}}
    else:
        trail_result = AuditTrail(settings.audit_path).verify()
    promotions_result = verify_promotions(settings.models_dir)
    for where, result in ((settings.audit_path, trail_result), (settings.models_dir, promotions_result)):
        if not result["ok"]:
            print(f"BROKEN: {where}: {result['problem']}")
            return 1
    for table, count in trail_result["rows"].items():
        print(f"intact: {count} {table} row(s); last hash {trail_result['last'][table]}")
    print(f"intact: {promotions_result['entries']} promotion(s); last hash {promotions_result['last']}")
    return 0


# users: local accounts of the dashboard -----------------------------------------------------------

def _add_users_parser(commands, settings) -> None:
    users = commands.add_parser("users", help="dashboard accounts: add, list, disable, set-role (stored in "
                                              "PNEUMO_HOME/users.sqlite)")
    users.set_defaults(func=cmd_users)
    user_commands = users.add_subparsers(dest="users_command", required=True)
    add = user_commands.add_parser("add", help="add an account; the password is asked twice (or read from one or "
                                              "two lines of standard input when it is not a terminal)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["clinician", "ml_lead", "auditor", "admin"])
    user_commands.add_parser("list", help="accounts, their roles and state").add_argument("--json", action="store_true")
    user_commands.add_parser("disable", help="stop an account from signing in (its name stays taken)"
                             ).add_argument("name")
    user_commands.add_parser("enable", help="let a disabled account sign in again").add_argument("name")
    set_role = user_commands.add_parser("set-role", help="give an account another role")
    set_role.add_argument("name")
    set_role.add_argument("role", choices=["clinician", "ml_lead", "auditor", "admin"])


def _read_new_password() -> str:
    """A new password: asked twice on a terminal; else one line of stdin, or two that must match."""
    from pneumo_core.errors import AccountError
    if sys.stdin.isatty():
        import getpass
        first, second = getpass.getpass("Password: "), getpass.getpass("Password again: ")
    else:
        lines = sys.stdin.read().splitlines()
        if not lines or len(lines) > 2:
            raise AccountError("give the password as one line of standard input (a second, confirming line may "
                               "follow)")
        first, second = lines[0], lines[-1]
    if first != second:
        raise AccountError("the two passwords differ; nothing was changed")
    return first


def cmd_users(args, settings) -> int:
    from pneumo_core.records.access import cli_actor
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.records.users import UserStore
    store, actor = UserStore(settings.home), cli_actor()
    if args.users_command == "list":
        rows = store.list()
        if args.json:
            print(json.dumps(rows))
        elif not rows:
            print("no account yet; add one with: python -m pneumo_core users add NAME --role admin")
        for row in [] if args.json else rows:
            print(f"{row['name']:<24} {row['role']:<10} {'disabled' if row['disabled'] else 'enabled':<9} "
                  f"since {row['created']}")
        return 0
    if args.users_command == "add":
        account = store.add(args.name, args.role, _read_new_password())
        change = {"account": account["name"], "role": account["role"]}
    elif args.users_command == "set-role":
        before = store.get(args.name)["role"]
        account = store.set_role(args.name, args.role)
        change = {"account": account["name"], "role": account["role"], "was": before}
    else:
        account = getattr(store, args.users_command)(args.name)
        change = {"account": account["name"]}
    trail = AuditTrail(settings.audit_path)
    if hasattr(trail, "event"):  # the chained audit's events (another branch of this issue)
        trail.event("user_change", actor.name, source="cli", action=args.users_command.replace("-", "_"), **change)
    print(f"{account['name']}: {account['role']}, {'disabled' if account['disabled'] else 'enabled'} "
          f"(by {actor.name})")

# -- site go-live (validate, adapt) and monitoring ----------------------------------------------------

def _add_site_parser(commands, settings) -> None:
    site = commands.add_parser("site", help="go-live at a site: validate a model on its labelled films, adapt it")
    site.set_defaults(func=cmd_site)
    site_commands = site.add_subparsers(dest="site_command", required=True)
    data_help = "site folder: NORMAL/ and PNEUMONIA/ (or test/NORMAL and test/PNEUMONIA)"
    validate = site_commands.add_parser("validate", help="figures with 95%% CIs at the model's threshold on a "
                                        "site's films, OOD rate, verdict; stored with the model version")
    adapt = site_commands.add_parser("adapt", help="a candidate version adapted to a site's films; prints its id "
                                     "last (figures by patient-grouped cross-validation)")
    for sub in (validate, adapt):
        sub.add_argument("--data", required=True, help=data_help)
        sub.add_argument("--model", help="model version id or folder (default: the active model)")
        sub.add_argument("--name", help="site name (default: the folder's name)")
    for sub in (validate, adapt):   # the site's triage promises, stored with its site report
        sub.add_argument("--alpha", type=float, default=settings.triage_alpha,
                         help="triage: largest share of pneumonias in the low tier, 95%% confidence "
                              "(default %(default)s)")
        sub.add_argument("--beta", type=float, default=settings.triage_beta,
                         help="triage: largest share of normals in the high tier, 95%% confidence "
                              "(default %(default)s)")
    validate.add_argument("--json", action="store_true")


def cmd_site(args, settings) -> int:
    from pneumo_core.golive import sites as site
    from pneumo_core.records.registry import resolve
    if args.site_command == "validate":
        report = site.validate(resolve(settings.models_dir, args.model), args.data, args.name,
                               alpha=args.alpha, beta=args.beta)
        if args.json:
            print(json.dumps(report))
            return 0
        ci = report["ci"]
        for key in ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "ece"):
            interval = f" [{ci[key][0]:.3f}-{ci[key][1]:.3f}]" if ci.get(key) else ""
            print(f"{key:>12}: {report[key]:.3f}{interval}" if report[key] is not None else f"{key:>12}: -")
        ood = report["ood"]
        print(f"{'threshold':>12}: {report['threshold']:.3f} (the model's own)\n{'films':>12}: {report['n']}"
              + (f"\n{'OOD flagged':>12}: {ood['rate']:.1%}" if ood["available"] else ""))
        print(report["verdict"])
        print(report["triage_summary"])
        print(f"site report: {resolve(settings.models_dir, args.model) / 'site_reports' / (report['site'] + '.json')}")
        return 0
    version_id = site.adapt(settings, args.data, args.name, args.model, alpha=args.alpha, beta=args.beta)
    card = json.loads((settings.models_dir / version_id / "metadata.json").read_text())
    cv = card["site"]["cross_validated"]
    print(f"site {card['site']['name']} ({card['site']['n']} films, {cv['folds']}-fold by patient): AUC "
          f"{cv['roc_auc']:.3f}, sensitivity {cv['sensitivity']:.3f}, specificity {cv['specificity']:.3f}, "
          f"ECE {cv['ece']:.3f}; threshold {card['threshold']:.3f}")
    print(f"candidate: not active until promoted (python -m pneumo_core promote {version_id})")
    print(version_id, flush=True)
    return 0


def _add_monitor_parser(commands, settings) -> None:
    monitor = commands.add_parser("monitor", help="drift of recent diagnoses (audit trail) against the model's "
                                  "validation distribution: PSI, KS, OOD rate, calls per day")
    monitor.set_defaults(func=cmd_monitor)
    monitor.add_argument("--days", type=int, default=30, help="recent window in days")
    monitor.add_argument("--model", help="model version id (default: the active model)")
    monitor.add_argument("--json", action="store_true")


def cmd_monitor(args, settings) -> int:
    from pneumo_core.golive.monitor import monitor
    report = monitor(settings, args.days, args.model)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model {report['model']}: {report['n']} diagnoses in the last {report['days']} days; reference: "
          f"{report['reference']['label']} ({report['reference']['n']} films)")
    if report["psi"] is not None:
        print(f"PSI {report['psi']:.3f}, KS {report['ks']:.3f} (p {report['ks_p']:.3g}), OOD flagged "
              + (f"{report['ood_rate']:.1%}" if report["ood_rate"] is not None else "-"))
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    return 0


def main(argv=None) -> int:
    settings = load_settings()
    args = parse_args(argv, settings)
    _show_library_log()
    try:
        return args.func(args, settings)
    # Only errors a user can act on become one line; anything else is a bug and keeps its traceback.
    except PneumoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
