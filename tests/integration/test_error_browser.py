"""The Metrics error browser's heatmap (ui.error_overlay) on the session's trained model: the Diagnose
page's chest mask applies, so nothing is coloured outside the chest (issue 24, item 10)."""
import cv2
import numpy as np
from helpers import chest_film

from pneumo_core.explain.heatmap import chest_mask, to_original_size
from pneumo_core.records.registry import resolve


def test_the_error_browsers_heatmap_is_zero_outside_the_diagnose_chest_mask(trained_home, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(trained_home))
    import ui
    film = chest_film((300, 240), diaphragm=0.6)
    cv2.putText(film, "R", (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 255, 3)   # a bright side marker in the air
    path = tmp_path / "IM-0001-0001.png"
    cv2.imwrite(str(path), film)
    version = str(resolve(trained_home / "models", None))
    picture = ui.error_overlay(version, str(path), side=300)
    assert picture.shape == (300, 240, 3)
    d = ui.diagnoser_for(version).diagnose(film, path.name)
    mask = chest_mask(film, d.heatmap.shape[0])
    outside = to_original_size(mask, film.shape) == 0          # strictly outside, past the stretched edge
    plain = np.repeat(film[:, :, None], 3, axis=2)
    assert outside[:60, :60].any() and outside.mean() > 0.1     # the marker's corner and the abdomen are outside
    assert np.array_equal(picture[outside], plain[outside])     # nothing drawn there: zero outside the mask
    heat_outside = to_original_size(d.heatmap, film.shape)[outside]
    assert heat_outside.max() == 0                              # and the map itself is zero there
    # The same map as the Diagnose page: where it holds evidence the browser's picture is coloured.
    if d.heatmap.max() > 0:
        inside = to_original_size(d.heatmap, film.shape) > 0.2
        assert np.any(picture[inside] != plain[inside])
