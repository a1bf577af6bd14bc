"""Triage tiers on a site's films, by patient-grouped cross-validation; and drift at a normal-heavy case mix.

Usage: PNEUMO_HOME=/path/with/default/model python bench/triage.py [--data ../shared/data/site]
       [--cache /tmp/triage-scores.npz]

For each of 5 patient-grouped folds (`sites.patient_folds`), tiers are set (`fit_tiers`, alpha 5 %,
beta 10 %, 95 % confidence) on the other folds' probabilities and applied to the held-out fold;
the held-out films are counted once over the folds:
- out of the box: the default model's probabilities of the site films (what `site validate` sets
  the tiers on);
- adapted: the out-of-fold probabilities of the candidate `site adapt` makes (its method: heads
  trained on the other folds' films, through the served Platt calibration), which is what the
  candidate's site report sets its tiers on. The held-out fold's probabilities come from a head that
  never saw its films; the tiers never saw them either (not nested: the other folds' probabilities
  came from heads that did train on the held-out films, a mild optimism).
Reported: pneumonias in low / all pneumonias, normals in high / all normals, films in a definite tier.

Drift: the site films split by patient into a reference half (labelled) and a "clinic day" drawn
from the other half at 10 % prevalence (150 films, 20 draws): the share of days with a drift alarm,
with the default model as served, then with the same films inverted and contrast-crushed.
Scores are cached (`--cache`) so a second run takes seconds.
"""
from common import report  # noqa: I001

import argparse
from pathlib import Path

import numpy as np

from pneumo_core.evaluation.metrics import fit_platt
from pneumo_core.golive import monitor
from pneumo_core.golive import adaptation, validation
from pneumo_core.golive.sites import load_site, patient_folds
from pneumo_core.evaluation.triage import fit_tiers
from pneumo_core.records.registry import resolve
from pneumo_core.settings import load_settings

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "site"))
parser.add_argument("--model")
parser.add_argument("--cache", default="/tmp/triage-scores.npz")
parser.add_argument("--folds", type=int, default=5)
args = parser.parse_args()
films = load_site(args.data)
y, patients = films.y, films.frame["patient"].to_numpy()


def sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def crushed(gray):
    """A film with its contrast crushed: grey levels squeezed into a quarter of the range around mid-grey."""
    return (96 + gray.astype(np.float32) / 4).astype(np.uint8)


def score_changed(model, paths, change):
    """(probabilities, OOD flags) of the films after `change` (pixels), as the model serves them."""
    import tempfile

    import cv2

    from pneumo_core.imaging.films import read_image
    from pneumo_core.imaging.ood import OODDetector
    with tempfile.TemporaryDirectory() as folder:
        changed = []
        for i, path in enumerate(paths):
            out = Path(folder) / f"{i}.png"
            cv2.imwrite(str(out), change(read_image(str(path))))
            changed.append(out)
        p, embeddings = validation.score_films(model, changed, "changed films")
    detector = OODDetector.load(model.path)
    flags = detector.score(embeddings) > 1.0 if detector is not None else np.zeros(len(p), bool)
    return p, flags


if Path(args.cache).is_file():
    cached = np.load(args.cache)
    p_default, p_oof = cached["p_default"], cached["p_oof"]
    changes = {k: (cached[f"p_{k}"], cached[f"ood_{k}"]) for k in ("inverted", "crushed")}
    ood_plain = cached["ood_plain"]
    print(f"scores from {args.cache}")
else:
    import keras

    from pneumo_core.imaging.ood import OODDetector
    from pneumo_core.learn.model import PneumoModel, scoring_model
    settings = load_settings()
    version_dir = resolve(settings.models_dir, args.model)
    model = PneumoModel.load(version_dir)
    p_default, embeddings = validation.score_films(model, films.frame["path"])
    detector = OODDetector.load(version_dir)
    ood_plain = detector.score(embeddings) > 1.0 if detector is not None else np.zeros(len(y), bool)
    changes = {"inverted": score_changed(model, films.frame["path"], lambda g: 255 - g),
               "crushed": score_changed(model, films.frame["path"], crushed)}
    # The adapted candidate's out-of-fold probabilities, as `site adapt` computes them.
    _, site_views = validation.score_views(model, films.frame["path"], adaptation.TTA_VIEWS, adaptation.TTA_SEED)
    scorer = scoring_model(model.keras)
    internal = adaptation.training_features(model.metadata, settings, keras.Model(scorer.inputs, scorer.outputs[1]),
                                      views=True)
    x_train, train = internal["train"]
    train_views = internal.get("train_views", x_train[None])
    y_train = train["label"].to_numpy().astype(int)
    folds = patient_folds(patients, y, args.folds, 0)
    oof = adaptation.out_of_fold_view_logits(train_views.reshape(-1, train_views.shape[-1]),
                                       np.tile(y_train, len(train_views)), site_views, y, folds,
                                       stats=(x_train.mean(0), x_train.std(0)))
    a, b = fit_platt(oof, y)
    p_oof = sigmoid(a * oof + b)
    np.savez(args.cache, p_default=p_default, p_oof=p_oof, ood_plain=ood_plain,
             **{f"p_{k}": v[0] for k, v in changes.items()}, **{f"ood_{k}": v[1] for k, v in changes.items()})

print(f"site {films.name}: {len(y)} films ({int(y.sum())} pneumonia, {int((y == 0).sum())} normal), "
      f"{len(set(patients))} patients")
folds = patient_folds(patients, y, args.folds, 0)
for name, p, targets in (("out of the box (site validate)", p_default, ("<= 2 %", "<= 8 %", ">= 60 %")),
                         ("adapted (site adapt, out-of-fold)", p_oof, ("<= 2 %", "<= 5 %", ">= 70 %"))):
    tier = np.empty(len(y), dtype=object)
    for fold in np.unique(folds):
        held = folds == fold
        tier[held] = fit_tiers(p[~held], y[~held]).tiers(p[held])
    missed = int(np.sum((tier == "low") & (y == 1)))
    alarms = int(np.sum((tier == "high") & (y == 0)))
    report(f"{name}: pneumonias in low ({missed} of {int(y.sum())})", 100 * missed / y.sum(), "%", targets[0])
    report(f"{name}: normals in high ({alarms} of {int((y == 0).sum())})", 100 * alarms / (y == 0).sum(), "%",
           targets[1])
    report(f"{name}: films in low or high", 100 * float(np.mean(tier != "uncertain")), "%", targets[2])
    whole = fit_tiers(p, y)
    print(f"  tiers on all {len(y)} site films: {whole.summary()}")

# -- drift at a normal-heavy case mix -------------------------------------------------------------------
halves = patient_folds(patients, y, 2, 1)
ref, rest = halves == 0, np.flatnonzero(halves == 1)
rng = np.random.default_rng(0)
pneumonias, normals = rest[y[rest] == 1], rest[y[rest] == 0]
days = [np.concatenate([rng.choice(pneumonias, 15), rng.choice(normals, 135)]) for _ in range(20)]
for label, scores, flags in (("plain films", p_default, ood_plain),
                             *((f"{k} films", v[0], v[1]) for k, v in changes.items())):
    alarms = unadjusted = 0
    for day in days:
        out = monitor.compare(p_default[ref], scores[day], flags[day], y[ref])
        alarms += out["drift"]
        unadjusted += out["psi_unadjusted"] >= monitor.PSI_WARNING
    report(f"drift alarms on 10 %-prevalence days of {label} (20 days of 150)", alarms, "of 20",
           "0 for plain films, 20 for changed ones")
    print(f"  unadjusted PSI over its line on {unadjusted} of 20 days; OOD flagged {np.mean(flags):.0%} of films")
