import cv2
import keras
import numpy as np
import pytest
from helpers import SPOT_SIZE as SIZE
from helpers import adult_chest_film, bright_spot_model, chest_film

from pneumo_core.errors import ConfigError
from pneumo_core.explain.cam import METHODS, make_cam, overlay, to_original_size
from pneumo_core.explain.heatmap import (
    as_float,
    by_evidence,
    chest_mask,
    colour_bar,
    display_name,
    evidence_weight,
    restrict,
    to_uint8,
    top_region,
)
from pneumo_core.imaging.preprocessing import prepare
from pneumo_core.learn.model import assemble, build_classifier, build_embedder, build_head


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
    heat[:, 5:15] = 0.1
    out = overlay(gray, heat, alpha=0.5)
    assert out.shape == (40, 70, 3) and out.dtype == np.uint8
    assert out[0, 60, 0] > out[0, 60, 2]  # hot half is red in JET
    assert out[0, 10, 2] > out[0, 10, 0]  # weak evidence is blue
    assert np.array_equal(out[0, 25], [100, 100, 100])   # none (or outside the chest): the film as it is
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


@pytest.mark.parametrize("diaphragm", [0.45, 0.55, 0.7])
def test_chest_mask_keeps_the_lungs_and_drops_outside_the_body_and_below_the_diaphragm(diaphragm):
    film = chest_film((260, 200), diaphragm=diaphragm)
    size = 64
    mask = chest_mask(film, size)
    assert mask.shape == (size, size) and set(np.unique(mask)) <= {0.0, 1.0}
    rows = np.arange(size) / size
    for cx in (0.33, 0.67):  # the centre of each lung is kept
        assert mask[int((diaphragm - 0.2) * size), int(cx * size)] == 1
    assert mask[:4, :4].sum() == 0 and mask[:4, -4:].sum() == 0          # air outside the body, top corners
    assert mask[rows > diaphragm + 0.1].sum() == 0                         # nothing under the diaphragm
    assert mask[(rows > 0.1) & (rows < diaphragm - 0.05), size // 2].all()  # the mediastinum between the lungs


def test_a_film_filling_the_frame_keeps_its_width_and_still_gets_a_lower_cutoff():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:160] / np.array([200, 160])[:, None, None]
    film = np.full((200, 160), 180.0) + rng.normal(0, 4, (200, 160))
    for cx in (0.3, 0.7):  # lungs down to 60 % of the height, no background air
        film[(((xx - cx) / 0.13) ** 2 + ((yy - 0.35) / 0.25) ** 2) <= 1] = 60
    mask = chest_mask(film.clip(0, 255).astype(np.uint8), 50)
    assert mask[:25].all(axis=1).sum() >= 20          # whole rows kept in the upper chest
    assert mask[int(0.75 * 50):].sum() == 0           # the abdomen is cut


def test_heatmaps_are_restricted_rescaled_and_stored_as_uint8():
    heat = np.zeros((64, 64), np.float32)
    heat[10, 10], heat[60, 60] = 0.3, 1.0              # the strongest 'evidence' is in the abdomen
    mask = np.zeros((64, 64), np.float32)
    mask[:40] = 1
    kept = restrict(heat, mask)
    assert kept[60, 60] == 0 and kept[10, 10] == pytest.approx(1.0)  # peak inside the chest is 1
    stored = to_uint8(kept)
    assert stored.dtype == np.uint8 and stored.max() == 255 and stored.nbytes == 64 * 64
    assert np.abs(as_float(stored) - kept).max() <= 1 / 255
    assert restrict(heat, np.zeros_like(mask)).max() == 0           # nothing inside: nothing drawn


def test_overlay_stretches_a_stored_map_over_the_film_and_can_draw_the_top_region_outline_only():
    gray = np.full((120, 90), 100, np.uint8)
    stored = np.zeros((32, 32), np.uint8)
    stored[8:16, 8:16] = 255
    colours = overlay(gray, stored, alpha=0.5)
    assert colours.shape == (120, 90, 3) and colours[45, 30, 0] > colours[45, 30, 2]   # hot is red
    outline = overlay(gray, stored, outline_only=True)
    changed = np.any(outline != 100, axis=2)
    assert 0 < changed.mean() < 0.2                      # a thin contour, not a colour wash
    assert not changed[45, 30]                           # the inside of the region keeps the film
    assert top_region(stored)[10, 10] and not top_region(stored)[0, 0]
    assert np.array_equal(overlay(gray, None), np.repeat(gray[:, :, None], 3, axis=2))


def test_colour_bar_runs_from_blue_to_red_and_methods_have_display_names():
    bar = colour_bar(100, 5)
    assert bar.shape == (5, 100, 3) and bar[0, 0, 2] > bar[0, 0, 0] and bar[0, -1, 0] > bar[0, -1, 2]
    assert [display_name(m) for m in METHODS] == ["Grad-CAM", "Grad-CAM++", "Score-CAM"]


def test_deletion_curve_falls_faster_along_a_faithful_heatmap_than_at_random(spot_model):
    gray = film_with_spot()
    x = prepare(gray, SIZE, "none")[None]
    cam = make_cam(spot_model, "gradcam", layer="bright")
    curve = cam.deletion_curve(x[0], cam(x)[0], steps=8, up_to=0.5)
    assert curve.fractions[0] == 0 and curve.fractions[-1] == pytest.approx(0.5) and len(curve.fractions) == 9
    assert curve.probabilities[0] == pytest.approx(float(np.asarray(spot_model(x))[0, 0]), abs=1e-4)
    assert curve.probabilities[-1] < curve.probabilities[0]
    assert curve.area < curve.random_area
    flat = cam.deletion_curve(x[0], np.zeros((SIZE, SIZE), np.float32), steps=8)  # no information: random order
    assert flat.area == pytest.approx(flat.random_area, abs=0.15)


def test_maps_are_scaled_by_the_films_evidence_so_a_clear_normal_film_draws_no_outline():
    """Issue 24, item 9: the outline was scaled to each film's own peak, so a NORMAL film at p < 0.01 drew a region."""
    gray = np.full((120, 90), 100, np.uint8)
    where = np.zeros((32, 32), np.float32)
    where[8:16, 8:16] = 1.0                            # restricted map: peak 1 inside the chest
    assert evidence_weight(0.5, 0.5) == pytest.approx(0.5)
    assert evidence_weight(0.005, 0.5) == 0.0 and evidence_weight(0.999, 0.5) == 1.0
    assert evidence_weight(0.3, 0.2) > evidence_weight(0.3, 0.5)   # the same p is more evidence under a lower threshold
    normal = to_uint8(by_evidence(where, 0.008, 0.5))  # p < 0.01
    assert not top_region(normal).any()
    assert np.array_equal(overlay(gray, normal, outline_only=True), np.repeat(gray[:, :, None], 3, axis=2))
    strong = to_uint8(by_evidence(where, 0.97, 0.5))
    assert top_region(strong)[10, 10] and np.any(overlay(gray, strong, outline_only=True) != 100)
    # One scale: the stronger call is drawn hotter at the same place.
    assert strong.max() > to_uint8(by_evidence(where, 0.7, 0.5)).max() > normal.max()


def _lungs_kept(gray: np.ndarray, lungs: np.ndarray, size: int = 224) -> float:
    mask = chest_mask(gray, size) > 0
    small = cv2.resize(lungs.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
    return float((mask & small).sum() / small.sum())


@pytest.mark.parametrize("seed", range(4))
def test_the_chest_mask_keeps_the_lung_bases_of_adult_like_films(seed):
    """Issue 24, item 11: the lower cut removed the bases of an adult film (faint, low on the flanks)."""
    film, lungs = adult_chest_film(seed)
    assert _lungs_kept(film, lungs) >= 0.95
    rows = np.flatnonzero(chest_mask(film, 224).any(axis=1))
    assert rows[-1] < 0.95 * 224                       # the abdomen's lowest rows are still cut

