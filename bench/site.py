"""Go-live at a site: out of the box vs adapted, cross-validated on the site's films, and the alternatives tried.

Usage: PNEUMO_HOME=/path/with/default/model python bench/site.py [--data ../shared/data/site] [--seeds 3]

Every figure comes from the site's labelled films (198 films of the official test split, never trained
on by the default model). Adaptation methods are scored by patient-grouped 5-fold cross-validation
(`site.patient_folds`; no film is scored by a head that trained on it), with Platt calibration and the
operating threshold cross-fitted on the other folds (`adaptation.cross_fit`), over several fold seeds (mean).
Out-of-the-box ideas use no site labels at all and are scored on every site film.
Also times `site validate` and `site adapt` (into a temporary copy of the home).
"""
from common import report  # noqa: I001

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from pneumo_core.golive import adaptation, validation
from pneumo_core.golive import sites as site
from pneumo_core.settings import Augmentation
from pneumo_core.evaluation.metrics import expected_calibration_error, metrics_at
from pneumo_core.learn.features import embed
from pneumo_core.learn.model import PneumoModel, scoring_model
from pneumo_core.records.registry import resolve
from pneumo_core.settings import load_settings

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "site"))
parser.add_argument("--model")
parser.add_argument("--seeds", type=int, default=3)
args = parser.parse_args()
settings = load_settings()
version_dir = resolve(settings.models_dir, args.model)
model = PneumoModel.load(version_dir)
films = site.load_site(args.data)
y = films.y
patients = films.frame["patient"]
print(f"model {model.id}; site {films.name}: {len(y)} films ({int((y == 0).sum())} normal / {int(y.sum())} "
      f"pneumonia), {patients.nunique()} patients", flush=True)

# -- site validate: wall time (report not stored) -----------------------------------------------------
start = time.perf_counter()
validated = validation.validate(version_dir, args.data, save=False, model=None)
report("site validate wall time (model load, 198 films, 1000 patient bootstraps)", time.perf_counter() - start, "s",
       "< 60 s")

p_base, x_site = validation.score_films(model, films.frame["path"])
z_base = np.log(np.clip(p_base, 1e-7, 1 - 1e-7) / np.clip(1 - p_base, 1e-7, 1))
scorer = scoring_model(model.keras)
embedder = keras.Model(scorer.inputs, scorer.outputs[1])
internal = adaptation.training_features(model.metadata, settings, embedder, views=True)
x_train, train = internal["train"]
train_views = internal.get("train_views", x_train[None])
z_views, site_views = validation.score_views(model, films.frame["path"], 5, 0)
y_train = train["label"].to_numpy().astype(int)
stats = (x_train.mean(0), x_train.std(0))
classifier = model.keras.get_layer("classifier")
grid = classifier.input_shape[1:3]


def sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def base_logit(x):
    """The default model's calibrated logit of pooled features (a constant feature map pools to itself)."""
    maps = np.broadcast_to(np.asarray(x, np.float32)[:, None, None, :], (len(x), *grid, x.shape[1]))
    return np.asarray(classifier.predict_on_batch(np.ascontiguousarray(maps))).reshape(-1)


def line(name, p, threshold):
    m = metrics_at(y, p, threshold)
    auc = roc_auc_score(y, p)
    print(f"  {name:<62} AUC {auc:.3f}  sens {m['sensitivity']:.3f}  spec {m['specificity']:.3f}  "
          f"ECE {expected_calibration_error(y, p):.3f}", flush=True)
    return auc, m


# -- out of the box: no site labels ------------------------------------------------------------------
print("\nOut of the box (no site labels; every site film, the model's stored threshold):")
auc0, m0 = line("default model", p_base, model.threshold)
report("out of the box: site AUC / sensitivity / specificity / ECE",
       f"{auc0:.3f} / {m0['sensitivity']:.3f} / {m0['specificity']:.3f} / "
       f"{expected_calibration_error(y, p_base):.3f}", "", "AUC >= 0.955")
mean_site, std_site = x_site.mean(0), x_site.std(0) + 1e-6
line("+ per-site mean shift of the embeddings (unlabelled site films)",
     sigmoid(base_logit(x_site - mean_site + stats[0])), model.threshold)
line("+ per-site standardisation toward train statistics (diagonal CORAL)",
     sigmoid(base_logit((x_site - mean_site) / std_site * stats[1] + stats[0])), model.threshold)
views = [embed(embedder, films.frame["path"], model.image_size, model.normalisation, Augmentation(), seed=100 + v)
         for v in range(3)]
line("+ test-time augmentation (plain + 3 training-style views, mean logit)",
     sigmoid(np.mean([z_base] + [base_logit(v) for v in views], axis=0)), model.threshold)
mild = Augmentation(rotation=5, zoom=0.05, shift=0.04, gamma=0.1, contrast=0.1, blur=0.0, noise=0.0)
mild_views = [embed(embedder, films.frame["path"], model.image_size, model.normalisation, mild, seed=200 + v)
              for v in range(3)]
for k in (3, 5):   # what a version with metadata tta = {views: k, seed: 0} serves (model.tta_inputs)
    line(f"+ TTA as served (plain + {k} views, seeds (0, v), mean calibrated logit)",
         sigmoid(z_views[:, :k + 1].mean(1)), model.threshold)
line("+ test-time augmentation, mild views (rotation 5, zoom 5 %, shift 4 %, gamma/contrast 10 %)",
     sigmoid(np.mean([z_base] + [base_logit(v) for v in mild_views], axis=0)), model.threshold)

# -- adapted: cross-validated on the site --------------------------------------------------------------
print(f"\nAdapted (patient-grouped 5-fold CV on the site films, mean of {args.seeds} fold seeds; calibration and "
      f"threshold cross-fitted):")


def cv(name, oof_logits_for, target=adaptation.SITE_MIN_SENSITIVITY):
    rows = []
    for seed in range(args.seeds):
        folds = site.patient_folds(patients, y, site.FOLDS, seed)
        logits = oof_logits_for(folds)
        p, t = adaptation.cross_fit(logits, y, folds, target)
        m = metrics_at(y, (p >= t).astype(float), 0.5)
        rows.append((roc_auc_score(y, logits), m["sensitivity"], m["specificity"], expected_calibration_error(y, p)))
    auc, sens, spec, ece = np.mean(rows, axis=0)
    print(f"  {name:<62} AUC {auc:.3f}  sens {sens:.3f}  spec {spec:.3f}  ECE {ece:.3f}", flush=True)
    return auc, sens, spec, ece


def adapted(weight=adaptation.SITE_WEIGHT, c=adaptation.HEAD_C, train_rows=True):
    memo = {}

    def run(folds):
        if train_rows:
            key = tuple(folds)   # the same folds give the same heads: fit once per seed
            if key not in memo:
                memo[key] = adaptation.out_of_fold_logits(x_train, y_train, x_site, y, folds, site_weight=weight,
                                                          c=c, stats=stats)
            return memo[key]
        out = np.zeros(len(y))
        for f in np.unique(folds):
            held = folds == f
            head = adaptation.LinearHead.fit(x_site[~held], y[~held], c=c, mean=stats[0], std=stats[1])
            out[held] = head.logit(x_site[held])
        return out
    return run


cv("recalibration only (default model, Platt + threshold on site)", lambda folds: z_base)
train_only = adaptation.LinearHead.fit(x_train, y_train, c=adaptation.HEAD_C, mean=stats[0], std=stats[1]).logit(x_site)
cv("logistic head on train only, recalibrated on site", lambda folds: train_only)
cv("logistic head on site films only", adapted(train_rows=False))
for weight in (1, 5, 20):   # weight 10, C 0.005 is the chosen method, below
    for c in (0.005, 0.05):
        cv(f"logistic head, train + site weight {weight:>2}, C={c}", adapted(weight, c))
cv("logistic head, train + site weight 10, C=0.05", adapted(10, 0.05))
plain_logits = adapted()
for target in (0.95, 0.96, 0.97):
    cv(f"plain views (w {adaptation.SITE_WEIGHT:g}, C {adaptation.HEAD_C}), threshold at OOF sensitivity {target:.2f}",
       plain_logits, target)


def ensemble(folds):
    z = plain_logits(folds)
    return 0.7 * z / z.std() + 0.3 * z_base / z_base.std()


cv("average of the plain-view head (0.7) and the default model (0.3)", ensemble)


def with_views(k, train_all=True, weight=adaptation.SITE_WEIGHT):
    """Heads on every cached view of the training films (or the plain one) and plain + k views of the other
    folds' site films; each held-out film scored by its mean logit over plain + k views (TTA)."""
    x_t = train_views.reshape(-1, train_views.shape[-1]) if train_all else x_train
    y_t = np.tile(y_train, len(train_views)) if train_all else y_train
    memo = {}

    def run(folds):
        key = tuple(folds)
        if key not in memo:
            memo[key] = adaptation.out_of_fold_view_logits(x_t, y_t, site_views[:k + 1], y, folds, weight, stats=stats)
        return memo[key]
    return run


cv("train plain + site plain/3 views w 10, TTA 3", with_views(3, train_all=False))
cv("train plain/3 views + site plain/3 views w 2.5 each, TTA 3", with_views(3, weight=adaptation.SITE_WEIGHT / 4))
if adaptation.TTA_VIEWS != 5:  # else the chosen row below is this one
    cv("train plain/3 views + site plain/5 views w 10, TTA 5", with_views(5))
chosen = cv(f"chosen: train plain/3 views + site plain/{adaptation.TTA_VIEWS} views w 10, TTA {adaptation.TTA_VIEWS}",
            with_views(adaptation.TTA_VIEWS))
report("adapted (chosen), cross-validated: AUC / sensitivity / specificity / ECE",
       " / ".join(f"{v:.3f}" for v in chosen), "", "AUC >= 0.97, sens >= 0.95, spec >= 0.85, ECE <= 0.05")

# -- site adapt: wall time, into a temporary copy of the home -----------------------------------------
with tempfile.TemporaryDirectory() as tmp:
    home = Path(tmp) / "home"
    (home / "models").mkdir(parents=True)
    shutil.copytree(version_dir, home / "models" / version_dir.name)
    if settings.cache_dir.is_dir():
        shutil.copytree(settings.cache_dir, home / "features")
    start = time.perf_counter()
    new = adaptation.adapt(replace(settings, home=home), args.data, model_ref=version_dir.name)
    report("site adapt wall time (model load, site films, CV, final head, save)", time.perf_counter() - start, "s",
           "< 10 min")
print(f"(validate said: {validated['verdict']})")
