import keras
import numpy as np
import pytest
from helpers import SPOT_SIZE as SIZE
from helpers import bright_spot_model

from pneumo_core.cam import METHODS, make_cam, overlay, to_original_size
from pneumo_core.errors import ConfigError
from pneumo_core.model import assemble, build_classifier, build_embedder, build_head
from pneumo_core.preprocessing import prepare


@pytest.fixture(scope="module")
def spot_model():
    return bright_spot_model()


def film_with_spot():
    """A non-square film (120 x 300) with one bright square at rows 20-50, columns 200-260."""
    gray = np.full((120, 300), 60, np.uint8)
    gray[20:50, 200:260] = 250
    return gray


@pytest.mark.parametrize("method", sorted(METHODS))
def test_heatmap_lands_on_the_evidence_in_original_coordinates(spot_model, method):
    gray = film_with_spot()
    maps = make_cam(spot_model, method, layer="bright")(prepare(gray, SIZE, "none")[None])
    assert maps.shape == (1, SIZE, SIZE) and 0 <= maps.min() and maps.max() == pytest.approx(1.0)
    heatmap = to_original_size(maps[0], gray.shape)
    assert heatmap.shape == gray.shape
    inside, outside = heatmap[20:50, 200:260].mean(), np.delete(heatmap, np.s_[10:60], axis=0).mean()
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert 15 <= row <= 55 and 190 <= col <= 270
    assert inside > 5 * outside


def test_explaining_normal_is_empty_when_all_evidence_is_for_pneumonia(spot_model):
    maps = make_cam(spot_model, "gradcam", layer="bright")(prepare(film_with_spot(), SIZE, "none")[None], target=0)
    assert np.all(maps == 0)


def test_gradcam_works_through_a_nested_keras_application():
    embedder = build_embedder("mobilenet_v2", 64, None)
    backbone = embedder.get_layer("backbone")
    model = assemble("mobilenet_v2", backbone, build_classifier(backbone.output_shape[1:], [build_head(1280, 8)]))
    assert isinstance(model.get_layer("backbone"), keras.Model)  # the nested case, where the classic recipe fails
    maps = make_cam(model, "gradcam")(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and ((0 <= maps) & (maps <= 1)).all()


def test_overlay_blends_a_colour_map_over_the_film():
    gray = np.full((40, 70), 100, np.uint8)
    heat = np.zeros((40, 70), np.float32)
    heat[:, 35:] = 1.0
    out = overlay(gray, heat, alpha=0.5)
    assert out.shape == (40, 70, 3) and out.dtype == np.uint8
    assert out[0, 60, 0] > out[0, 60, 2]  # hot half is red in JET
    assert out[0, 10, 2] > out[0, 10, 0]  # cold half is blue
    assert np.array_equal(overlay(gray, heat, alpha=0.0)[..., 0], gray)


def test_unknown_method_lists_the_choices(spot_model):
    with pytest.raises(ConfigError, match="gradcam, gradcam\\+\\+, scorecam"):
        make_cam(spot_model, "lime")


def test_explain_returns_the_models_own_probability(spot_model):
    x = prepare(film_with_spot(), SIZE, "none")[None]
    maps, probability = make_cam(spot_model, "gradcam", layer="bright").explain(x)
    assert probability == pytest.approx(np.asarray(spot_model(x)).reshape(-1), abs=1e-5)
    _, same = make_cam(spot_model, "gradcam", layer="bright").explain(x, target=0)
    assert same == pytest.approx(probability, abs=1e-5)


def test_with_a_threshold_each_film_explains_its_own_call(spot_model):
    x = prepare(film_with_spot(), SIZE, "none")[None]
    cam = make_cam(spot_model, "gradcam", layer="bright")
    for threshold, target in ((0.0, 1), (1.1, 0)):  # called PNEUMONIA, then called NORMAL
        maps, _ = cam.explain(x, threshold=threshold)
        np.testing.assert_array_equal(maps, cam(x, target=target))
