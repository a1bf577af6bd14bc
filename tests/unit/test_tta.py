"""Test-time augmentation: a per-version setting, deterministic, the mean calibrated logit over the views."""
import numpy as np
import pandas as pd
import pytest
from helpers import SPOT_SIZE, bright_spot_model

from pneumo_core.golive import adaptation
from pneumo_core.golive import sites as site
from pneumo_core.learn.model import PneumoModel, tta_inputs


def _film(seed=0, shape=(80, 70)):
    rng = np.random.default_rng(seed)
    film = rng.integers(0, 120, shape).astype(np.uint8)
    film[20:50, 15:45] = 230                       # bright evidence, moved about by the views
    return film


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


@pytest.fixture(scope="module")
def keras_model():
    return bright_spot_model()


def _model(keras_model, tta=None):
    meta = {"image_size": SPOT_SIZE, "normalisation": "none", "threshold": 0.5, **({"tta": tta} if tta else {})}
    return PneumoModel(keras_model, meta)


def test_tta_score_is_deterministic_and_the_mean_logit_over_the_views(keras_model):
    films = [_film(0), _film(1, (60, 90))]
    model = _model(keras_model, {"views": 3, "seed": 7})
    first = model.predict(films)
    assert np.array_equal(first, model.predict(films))                          # same film, same score
    assert np.array_equal(first[1:], model.predict(films[1:]))                  # whatever its batch
    expected = []
    for film in films:
        views = tta_inputs(film, SPOT_SIZE, "none", 3, 7)
        assert views.shape == (4, SPOT_SIZE, SPOT_SIZE, 3)
        expected.append(1 / (1 + np.exp(-_logit(model.predict_inputs(views)).mean())))
    assert np.allclose(first, expected, atol=1e-5)
    plain = _model(keras_model).predict(films)
    assert not np.allclose(first, plain, atol=1e-3)                            # the views do change the score
    probability, embeddings = model.predict_and_embed(films)
    assert np.allclose(probability, first) and embeddings.shape[0] == 2
    assert np.allclose(embeddings, _model(keras_model).predict_and_embed(films)[1], atol=1e-5)   # plain view's
    assert np.allclose(model.tta_adjust(films, plain), first, atol=1e-5)       # from a known plain score
    assert np.array_equal(_model(keras_model).tta_adjust(films, plain), plain)  # no TTA: unchanged
    other_seed = _model(keras_model, {"views": 3, "seed": 8}).predict(films)
    assert not np.allclose(other_seed, first, atol=1e-4)


def test_tta_views_of_a_held_out_fold_never_train_its_head(monkeypatch):
    rng = np.random.default_rng(0)
    patients = pd.Series([f"p{i // 2}" for i in range(60)])
    y = np.array([(i // 2) % 3 != 0 for i in range(60)], int)
    views = rng.normal(size=(4, 60, 3))
    views[:, :, 0] = np.arange(60)                 # every view of a film carries its id
    folds = site.patient_folds(patients, y, k=4)
    seen = []

    class SpyHead:
        def __init__(self, ids):
            self.trained = set(ids.astype(int))

        def logit(self, x):
            seen.append((self.trained, set(x[:, 0].astype(int)), len(x)))
            return x[:, 1]

    monkeypatch.setattr(adaptation, "fit_site_head", lambda x_tr, y_tr, x_s, y_s, *args, **kw: SpyHead(x_s[:, 0]))
    logits = adaptation.out_of_fold_view_logits(rng.normal(size=(10, 3)), np.arange(10) % 2, views, y, folds)
    for trained, scored, rows in seen:
        assert not trained & scored and rows == 4 * len(scored)                # all 4 views scored, none trained
    assert np.allclose(logits, views[:, :, 1].mean(0))                         # the mean over a film's views
