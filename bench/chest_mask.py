"""How much of the lungs the chest mask keeps (issue 24, item 11): films of both ages.

- Paediatric: six films of the shared data (Kermany set) whose lungs were outlined by hand
  (tests/fixtures/lung_outlines.json says how).
- Adult-like: synthetic films with adult proportions and an exact lung mask (tests/helpers.py
  `adult_chest_film`: low costophrenic angles, domes higher medially, gastric bubble); no adult film
  with outlined lungs is available here, so this is the stand-in, not a measurement on patients.

For each film: the share of the lung area inside `heatmap.chest_mask` at the model's resolution (224),
and the share of the mask that is not lung (what the mask lets through besides the lungs). Usage:
`python bench/chest_mask.py [--adult N]`.
"""
from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np
from common import REPO, SHARED

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from helpers import adult_chest_film  # noqa: E402

from pneumo_core.explain.heatmap import chest_mask  # noqa: E402

SIZE = 224
OUTLINES = REPO / "tests" / "fixtures" / "lung_outlines.json"


def outlined_lungs(shape: tuple[int, int], polygons: list) -> np.ndarray:
    """Boolean lung mask of a film of `shape` from polygons in fractions of its width and height."""
    lungs = np.zeros(shape, np.uint8)
    for polygon in polygons:
        points = np.round(np.array(polygon) * (shape[1] - 1, shape[0] - 1)).astype(np.int32)
        cv2.fillPoly(lungs, [points], 1)
    return lungs.astype(bool)


def coverage(gray: np.ndarray, lungs: np.ndarray) -> tuple[float, float]:
    """(share of the lungs inside the chest mask, share of the mask outside the lungs), at model resolution."""
    mask = chest_mask(gray, SIZE) > 0
    small = cv2.resize(lungs.astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST).astype(bool)
    return float((mask & small).sum() / small.sum()), float((mask & ~small).sum() / mask.sum())


def paediatric() -> list[tuple[str, float, float]]:
    """(film, lungs kept, mask beyond the lungs) of each hand-outlined film of the shared data."""
    rows = []
    for name, polygons in json.loads(OUTLINES.read_text())["films"].items():
        gray = cv2.imread(str(SHARED / "data" / name), cv2.IMREAD_GRAYSCALE)
        rows.append((name, *coverage(gray, outlined_lungs(gray.shape, polygons))))
    return rows


def adult(count: int) -> list[tuple[str, float, float]]:
    """The same for `count` synthetic adult-like films."""
    return [(f"adult-like synthetic {seed}", *coverage(*adult_chest_film(seed))) for seed in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adult", type=int, default=20, help="synthetic adult-like films")
    args = parser.parse_args()
    for group, rows in (("paediatric (hand-outlined)", paediatric()), ("adult-like (synthetic)", adult(args.adult))):
        kept = np.array([r[1] for r in rows])
        beyond = np.array([r[2] for r in rows])
        for name, lung, extra in rows:
            print(f"  {name}: lungs inside the mask {lung:.1%}, mask beyond the lungs {extra:.1%}")
        print(f"{group}: {len(rows)} films, lungs inside the mask min {kept.min():.1%} mean {kept.mean():.1%}; "
              f"mask beyond the lungs mean {beyond.mean():.1%}")


if __name__ == "__main__":
    main()
