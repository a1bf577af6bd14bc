"""Helpers shared by the benchmark scripts: timing and one result line per number."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "chest_xray"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"


def report(name: str, value, unit: str = "", target: str = "") -> None:
    """Print one result as `bench: NAME = VALUE UNIT [target ...]` (grep-able, README-ready)."""
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    print(f"bench: {name} = {text} {unit}".rstrip() + (f"   (target {target})" if target else ""), flush=True)


def timed(fn, repeat: int) -> np.ndarray:
    """Wall seconds of `repeat` calls of fn()."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return np.array(out)
