import numpy as np
import pytest

from pneumo_core.learn.tuning import tune_head, tuner_summary
from pneumo_core.progress import CallbackReporter

pytestmark = pytest.mark.slow_unit     # Keras Tuner searches: ~20 s


@pytest.mark.parametrize("algorithm", ["random", "bayesian", "hyperband"])
def test_search_finds_a_separating_head_and_reports_it(tmp_path, algorithm):
    import keras
    keras.utils.set_random_seed(0)  # head initialisations too: unseeded, 8 epochs left the best AUC near 0.9
    rng, updates = np.random.default_rng(0), []
    y = (rng.random(400) < 0.5).astype(np.float32)
    x = (rng.normal(0, 1, (400, 16)) + 2.0 * y[:, None] * (np.arange(16) < 4)).astype(np.float32)
    # Hyperband runs brackets of max_epochs (factor 3): 12 epochs made ~30 trials (57 s of a 2-minute unit tier
    # on 2 busy cores), 6 two brackets (15 s on an idle machine), 3 one bracket of a few short trials.
    epochs = 3 if algorithm == "hyperband" else 12
    tuner = tune_head(x[:300], y[:300], x[300:], y[300:], {0: 1.0, 1: 1.0}, tmp_path, trials=2, epochs=epochs,
                      algorithm=algorithm, reporter=CallbackReporter(updates.append))
    summary = tuner_summary(tuner)
    best = summary["best"][0]
    assert summary["trials_run"] >= 2 and best["val_auc"] > 0.9
    assert {"units", "dropout", "learning_rate", "l2"} <= set(best["hyperparameters"])
    assert updates[0].stage == "tuning trial" and updates[0].done == 0
    assert updates[-1].done == summary["trials_run"] and all(u.stage == "tuning trial" for u in updates)


def test_unknown_algorithm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="random, hyperband, bayesian"):
        tune_head(np.zeros((4, 2)), np.zeros(4), np.zeros((4, 2)), np.zeros(4), {0: 1, 1: 1}, tmp_path,
                  algorithm="grid")


def test_fit_head_logs_curves_and_class_weights_move_the_decision(tmp_path):
    import keras

    from pneumo_core.learn.data import class_weights
    from pneumo_core.learn.model import build_head
    from pneumo_core.learn.tuning import fit_head

    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.9).astype(np.float32)  # 9 pneumonia films to 1 normal
    x = (rng.normal(0, 1, (2000, 8)) + 0.7 * y[:, None]).astype(np.float32)
    called_normal = {}
    for name, weights in (("plain", {0: 1.0, 1: 1.0}), ("weighted", class_weights(y[:1500]))):
        keras.utils.set_random_seed(2)
        head = build_head(8, units=16, dropout=0.0, l2=1e-5)
        head.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = fit_head(head, x[:1500], y[:1500], (x[1500:], y[1500:]), 30, weights, batch_size=256)
        assert {"loss", "val_loss", "val_auc", "val_accuracy"} <= set(history.history)
        called_normal[name] = float((np.asarray(head(x[1500:])).reshape(-1) < 0).mean())
    assert called_normal["weighted"] > called_normal["plain"] + 0.1  # weighting stops 'always pneumonia'
