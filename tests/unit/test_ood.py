"""Out-of-distribution score on synthetic embeddings, and its plumbing through a saved version."""
import json

import numpy as np
import pytest

from pneumo_core.imaging.ood import OOD_FILE, OODDetector, assess, shrunk_precision

D = 64


def embeddings(n, seed, shift=0.0, scale=1.0):
    """Correlated non-negative 'pooled features' like a backbone's, optionally shifted or rescaled."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(0, 1, (D, D)) / np.sqrt(D)
    return np.abs(rng.normal(0, 1, (n, D)) @ mixing) * scale + shift


@pytest.fixture(scope="module")
def detector():
    return OODDetector.fit(embeddings(2000, 0), embeddings(400, 1))


def test_at_most_five_percent_of_validation_is_flagged(detector):
    val = embeddings(400, 1)
    flagged = np.mean(detector.score(val) > 1.0)
    assert flagged <= 0.05 and flagged == detector.fitted["val_flagged"]
    assert flagged >= 0.03  # the line sits at the 95th percentile, not far beyond it


def test_new_in_distribution_films_are_rarely_flagged(detector):
    assert np.mean(detector.score(embeddings(1000, 2)) > 1.0) < 0.10


@pytest.mark.parametrize("shift, scale", [(0.8, 1.0), (0.0, 2.0)])
def test_shifted_films_are_flagged(detector, shift, scale):
    assert np.mean(detector.score(embeddings(200, 3, shift, scale)) > 1.0) > 0.9


def test_assess_gives_score_and_flag_or_nothing_without_a_detector(detector):
    near, far = embeddings(1, 4), embeddings(1, 5, shift=3.0)
    ((score, flag),) = assess(detector, far)
    assert flag is True and score > 1.0
    assert assess(detector, near)[0][0] < score
    assert assess(None, far) == [(None, None)]


@pytest.mark.parametrize("n", [40, 500])    # fewer films than dimensions (the usual tiny set) and more
def test_the_precision_is_the_inverse_of_the_ledoit_wolf_covariance(n):
    from sklearn.covariance import LedoitWolf
    train = embeddings(n, 7)
    reference = LedoitWolf().fit(train).precision_       # sklearn's pseudo-inverse
    np.testing.assert_allclose(OODDetector.fit(train, embeddings(50, 8)).precision, reference,
                               rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_identical_embeddings_give_a_detector_not_an_error():
    same = np.ones((30, D))
    assert np.array_equal(shrunk_precision(np.zeros((D, D))), np.zeros((D, D)))
    assert np.isfinite(OODDetector.fit(same, same[:5]).precision).all()


def test_save_and_load_round_trip(detector, tmp_path):
    detector.save(tmp_path / OOD_FILE)
    loaded = OODDetector.load(tmp_path)
    x = embeddings(50, 6, shift=0.2)
    np.testing.assert_allclose(loaded.score(x), detector.score(x), rtol=1e-5)
    assert loaded.fitted == json.loads(json.dumps(detector.fitted))
    assert OODDetector.load(tmp_path / "older-version") is None and OODDetector.load(None) is None


def test_after_fine_tuning_the_detector_is_fitted_on_the_tuned_backbone(tmp_path):
    import cv2
    import pandas as pd
    from helpers import bright_spot_model

    from pneumo_core.learn.features import any_batch
    from pneumo_core.learn.model import scoring_model
    from pneumo_core.learn.training import fit_ood
    from pneumo_core.settings import TrainConfig
    rng = np.random.default_rng(0)
    paths = []
    for i in range(30):
        paths.append(str(tmp_path / f"f{i}.png"))
        cv2.imwrite(paths[-1], rng.integers(0, 256, (64, 64)).astype(np.uint8))
    train, val = pd.DataFrame({"path": paths[:20]}), pd.DataFrame({"path": paths[20:]})
    model = bright_spot_model()
    stale = np.zeros((20, 1), np.float32)  # the cache's vectors: must not be used after fine-tuning
    config = TrainConfig(fine_tune_epochs=1, image_size=32, normalisation="none")
    detector = fit_ood(model, stale, stale[:10], train, val, config)
    _, tuned = scoring_model(model).predict_on_batch(
        np.stack([np.repeat(cv2.resize(cv2.imread(p, 0), (32, 32))[..., None], 3, 2) for p in paths]
                 ).astype(np.float32))
    np.testing.assert_allclose(detector.mean, tuned[:20].mean(axis=0), rtol=1e-4, atol=1e-5)
    assert detector.fitted["train"] == 20 and detector.fitted["val"] == 10
    # Validation embeddings the caller already scored with the tuned backbone are used as they are (`train` passes
    # those it scored the validation films with): the same detector, its flag line fitted on them.
    given = fit_ood(model, stale, stale[:10], train, val, config, tuned_x_val=tuned[20:])
    assert given.fitted == detector.fitted
    np.testing.assert_allclose(given.threshold, detector.threshold, rtol=1e-4)
    shifted = fit_ood(model, stale, stale[:10], train, val, config, tuned_x_val=tuned[20:] + 100)
    assert shifted.threshold > 10 * detector.threshold      # the given ones, not films scored again
    # Scored through the scorer's function traced for any batch size (`train` passes one): the same embeddings.
    scorer = scoring_model(model)
    traced = fit_ood(model, stale, stale[:10], train, val, config, scorer, run=any_batch(scorer))
    np.testing.assert_array_equal(traced.mean, detector.mean)
    assert traced.threshold == detector.threshold
