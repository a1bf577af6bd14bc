"""The Diagnoser on the session's trained model: heatmaps inside the chest, stored as uint8."""

import numpy as np
import pytest
from helpers import chest_film


def test_diagnoser_stores_the_evidence_for_pneumonia_inside_the_chest_as_uint8(trained_home):
    from pneumo_core.explain.cam import make_cam
    from pneumo_core.explain.heatmap import chest_mask, evidence_weight
    from pneumo_core.learn.model import PneumoModel
    from pneumo_core.records.registry import resolve
    from pneumo_core.serve.diagnosis import Diagnoser
    model = PneumoModel.load(resolve(trained_home / "models", None))
    film = chest_film((300, 240))
    d = Diagnoser(model).diagnose(film, "film.png")
    assert d.heatmap.dtype == np.uint8 and d.heatmap.shape == (model.image_size, model.image_size)
    assert d.heatmap.nbytes == model.image_size ** 2             # one byte per pixel at model resolution
    mask = chest_mask(film, model.image_size)
    assert np.all(d.heatmap[mask == 0] == 0)                      # nothing outside the body or below the diaphragm
    # Evidence for PNEUMONIA whatever the call: the map is the PNEUMONIA map, not the NORMAL one.
    maps = make_cam(model.keras, "gradcam")(model.inputs([film]), target=1)[0]
    inside = maps * mask
    # Scaled by the film's evidence: its peak is the call's weight (one scale for every film of the model).
    weight = evidence_weight(d.probability, d.threshold)
    assert d.heatmap.max() / 255 == pytest.approx(weight if inside.max() > 0 else 0.0, abs=1 / 255)
    if inside.max() > 0 and weight > 0:
        assert np.corrcoef(d.heatmap.ravel().astype(float), inside.ravel())[0, 1] > 0.99


def test_the_test_retest_spread_is_measured_on_augmentation_views_and_cached_in_the_version(trained_home, tmp_path):
    import json
    import shutil

    from pneumo_core.learn.model import PneumoModel
    from pneumo_core.records.registry import resolve
    from pneumo_core.serve.prior import SPREAD_FILE, retest_spread
    folder = tmp_path / "version"
    shutil.copytree(resolve(trained_home / "models", None), folder)
    model = PneumoModel.load(folder)
    spread = retest_spread(model, films_limit=4, views=3)
    assert spread is not None and 0.0 <= spread <= 1.0
    cached = json.loads((folder / SPREAD_FILE).read_text())
    assert cached["films"] == 4 and cached["views"] == 3 and cached["spread"] == spread
    assert "augmentation views" in cached["method"]
    (folder / "predictions.csv").unlink()          # the cache answers; the test films are not read again
    assert retest_spread(model) == spread
