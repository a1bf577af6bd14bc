"""The chest mask on real paediatric films of the shared data whose lungs were outlined by hand (issue 24, item 11)."""
import json

import cv2
import numpy as np
import pytest
from conftest import REPO, SHARED

from pneumo_core.explain.heatmap import chest_mask


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="the shared data is not here")
def test_the_chest_mask_keeps_the_hand_outlined_lungs_of_paediatric_films():
    outlines = json.loads((REPO / "tests" / "fixtures" / "lung_outlines.json").read_text())["films"]
    assert len(outlines) >= 6
    for name, polygons in outlines.items():
        gray = cv2.imread(str(SHARED / "data" / name), cv2.IMREAD_GRAYSCALE)
        lungs = np.zeros(gray.shape, np.uint8)
        for polygon in polygons:
            corners = np.round(np.array(polygon) * (gray.shape[1] - 1, gray.shape[0] - 1)).astype(np.int32)
            cv2.fillPoly(lungs, [corners], 1)
        mask = chest_mask(gray, 224) > 0
        small = cv2.resize(lungs, (224, 224), interpolation=cv2.INTER_NEAREST).astype(bool)
        assert (mask & small).sum() / small.sum() >= 0.95, name
