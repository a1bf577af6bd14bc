import numpy as np
import pytest
from sklearn import metrics as sk

from pneumo_core.evaluation.metrics import (
    bootstrap_ci,
    calibration_curve,
    choose_threshold,
    classification_report,
    evaluate,
    expected_calibration_error,
    fit_platt,
    metrics_at,
    wilson_lower,
)


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 400), 0, 1)
    return y, p


def test_metrics_match_scikit_learn(scores):
    y, p = scores
    m = evaluate(y, p, 0.5, n_boot=50)
    call = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, call))
    assert m["precision"] == pytest.approx(sk.precision_score(y, call))
    assert m["recall"] == pytest.approx(sk.recall_score(y, call))
    assert m["f1"] == pytest.approx(sk.f1_score(y, call))
    assert m["specificity"] == pytest.approx(sk.recall_score(1 - y, 1 - call))
    assert m["confusion_matrix"] == sk.confusion_matrix(y, call).tolist()
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(sk.average_precision_score(y, p))
    assert m["brier"] == pytest.approx(sk.brier_score_loss(y, p))
    assert m["n"] == 400


def test_threshold_rule_keeps_sensitivity_and_is_the_highest(scores):
    y, p = scores
    t = choose_threshold(y, p, 0.95)
    assert metrics_at(y, p, t)["sensitivity"] >= 0.95
    higher = np.nextafter(t, 1.0)
    assert metrics_at(y, p, higher)["sensitivity"] < 0.95


def test_threshold_rule_on_separable_data_sits_at_the_lowest_kept_positive():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
    assert choose_threshold(y, p, 1.0) == pytest.approx(0.6)
    assert choose_threshold(y, p, 0.75) == pytest.approx(0.7)


def test_wilson_lower_bound_matches_the_textbook_value_and_sits_below_the_rate():
    # 95 of 100, z = 1.645: (0.95 + z²/200 - z·sqrt(0.95·0.05/100 + z²/40000)) / (1 + z²/100) = 0.9008
    assert wilson_lower(95, 100, 0.95) == pytest.approx(0.9008, abs=5e-4)
    bounds = wilson_lower(np.arange(0, 101), 100, 0.95)
    assert np.all(bounds <= np.arange(0, 101) / 100) and np.all(np.diff(bounds) > 0)


def test_threshold_with_confidence_calls_more_positives_so_new_films_keep_the_target():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(400), np.ones(600)].astype(int)
    p = np.r_[rng.uniform(0, 0.6, 400), rng.uniform(0.2, 1, 600)]
    plain, confident = choose_threshold(y, p, 0.95), choose_threshold(y, p, 0.95, confidence=0.95)
    assert confident < plain
    called = int(metrics_at(y, p, confident)["sensitivity"] * 600)
    assert wilson_lower(called, 600, 0.95) >= 0.95 > wilson_lower(called - 1, 600, 0.95)


def test_threshold_with_confidence_calls_every_positive_when_too_few_to_reach_it():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.5, 0.4, 0.8, 0.9])
    assert choose_threshold(y, p, 0.95, confidence=0.95) == pytest.approx(0.4)


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    p = np.repeat([0.1, 0.9], 1000)
    y = np.concatenate([np.r_[np.ones(100), np.zeros(900)], np.r_[np.ones(900), np.zeros(100)]])
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(y, np.repeat([0.0, 1.0], 1000)) == pytest.approx(0.1)
    curve = calibration_curve(y, p)
    assert curve["count"] == [1000, 1000] and curve["observed_rate"] == pytest.approx([0.1, 0.9])


def test_platt_scaling_repairs_overconfident_logits():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    true_logit = rng.normal(0, 1.5, 2000) + 2 * (y - 0.5)
    y = (rng.uniform(size=2000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = 5 * true_logit  # five times too confident
    a, b = fit_platt(logits, y)
    before = expected_calibration_error(y, 1 / (1 + np.exp(-logits)))
    after = expected_calibration_error(y, 1 / (1 + np.exp(-(a * logits + b))))
    assert a == pytest.approx(0.2, rel=0.2) and after < before / 2


def test_bootstrap_interval_contains_the_estimate(scores):
    y, p = scores
    ci = bootstrap_ci(y, p, 0.5, n_boot=200)
    auc, acc = sk.roc_auc_score(y, p), sk.accuracy_score(y, p >= 0.5)
    assert ci["roc_auc"][0] < auc < ci["roc_auc"][1] and ci["accuracy"][0] < acc < ci["accuracy"][1]
    assert ci["roc_auc"][1] - ci["roc_auc"][0] < 0.15


def test_bootstrap_auc_interval_is_scikit_learns_on_the_same_resamples():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    p = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.25, 40), 0, 1), 1)      # rounded: many tied scores
    aucs, draws = [], np.random.default_rng(7)
    for _ in range(300):       # bootstrap_ci's resamples: the same generator, drawn in the same order
        i = draws.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            aucs.append(sk.roc_auc_score(y[i], p[i]))
    expected = np.percentile(aucs, [2.5, 97.5])
    assert bootstrap_ci(y, p, 0.5, n_boot=300, seed=7)["roc_auc"] == pytest.approx(expected, abs=1e-12)


def test_bootstrap_intervals_are_those_of_one_resample_after_the_other_on_a_large_split():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 3000)
    p = np.round(np.clip(0.2 * y + rng.normal(0.4, 0.2, 3000), 0, 1), 2)
    aucs, accuracies, draws = [], [], np.random.default_rng(11)
    for _ in range(400):       # more films than one block of resamples holds: drawn in several blocks
        i = draws.integers(0, len(y), len(y))
        aucs.append(sk.roc_auc_score(y[i], p[i]))
        accuracies.append(sk.accuracy_score(y[i], p[i] >= 0.45))
    ci = bootstrap_ci(y, p, 0.45, n_boot=400, seed=11)
    assert ci["roc_auc"] == pytest.approx(np.percentile(aucs, [2.5, 97.5]), abs=1e-12)
    assert ci["accuracy"] == pytest.approx(np.percentile(accuracies, [2.5, 97.5]), abs=1e-12)


def test_classification_report_matches_scikit_learn(scores):
    y, p = scores
    rows = classification_report(y, p, 0.5)
    theirs = sk.classification_report(y, (p >= 0.5).astype(int), output_dict=True)
    assert [r["class"] for r in rows] == ["NORMAL", "PNEUMONIA"]
    for row, label in zip(rows, ("0", "1")):
        for key in ("precision", "recall", "f1"):
            assert row[key] == pytest.approx(theirs[label][key if key != "f1" else "f1-score"])
        assert row["support"] == theirs[label]["support"]
