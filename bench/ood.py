"""Out-of-distribution flag rates of the active model: its validation rate (from training), its
test split, and test films turned into the inputs people send by mistake (negative, rotated,
screenshot, phone photo of a screen, crop, blank, noise)."""
import cv2
import numpy as np
from common import report

from pneumo_core import Diagnoser, PneumoModel, load_dataset, load_settings, read_image, resolve

rng = np.random.default_rng(0)


def screenshot(g):
    """The film inside a viewer window: grey canvas, dark toolbar, burnt-in text."""
    h, w = g.shape
    canvas = np.full((int(h * 1.6), int(w * 1.8)), 240, np.uint8)
    canvas[: int(h * 0.12)] = 60
    canvas[int(h * 0.3): int(h * 0.3) + h, int(w * 0.6): int(w * 0.6) + w] = g
    for y in range(int(h * 0.3), int(h * 1.3), 40):
        cv2.putText(canvas, "Study 2024  Series 1", (20, y), 0, 1.0, 30, 2)
    return canvas


def phone_photo(g):
    """Perspective, blur, moire and glare, as when a screen is photographed."""
    h, w = g.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[w * .08, h * .05], [w * .95, 0], [w, h], [0, h * .9]])
    out = cv2.warpPerspective(g, cv2.getPerspectiveTransform(src, dst), (w, h), borderValue=20)
    yy, xx = np.mgrid[0:h, 0:w]
    moire = 18 * np.sin(xx / 3.0) * np.sin(yy / 3.0)
    glare = 90 * np.exp(-(((xx - w * .7) / (w * .2)) ** 2 + ((yy - h * .3) / (h * .2)) ** 2))
    return np.clip(cv2.GaussianBlur(out, (0, 0), 2) * 0.8 + moire + glare + 25, 0, 255).astype(np.uint8)


VARIANTS = {
    "unchanged": lambda g: g,
    "negative": lambda g: 255 - g,
    "rotated 90 degrees": lambda g: np.ascontiguousarray(np.rot90(g)),
    "screenshot of a viewer": screenshot,
    "phone photo of a screen": phone_photo,
    "top-left quarter only": lambda g: g[: g.shape[0] // 2, : g.shape[1] // 2],
    "blank grey": lambda g: np.full_like(g, 128),
    "noise": lambda g: rng.integers(0, 256, g.shape).astype(np.uint8),
}

settings = load_settings()
diagnoser = Diagnoser(PneumoModel.load(resolve(settings.models_dir)))
if diagnoser.ood is None:
    raise SystemExit("the active model has no ood.npz: train a new version")
meta = diagnoser.model.metadata
report("OOD flagged, validation split (calibration)", 100 * diagnoser.ood.fitted["val_flagged"], "%", "<= 5 %")
split = meta["data"]
test = load_dataset(split["dir"], split["val_fraction"], split["test_fraction"], split["split_seed"]).split("test")
films = [read_image(p) for p in test.path]
flags = [diagnoser.diagnose(g, method=None).ood_flag for g in films]
report(f"OOD flagged, test split ({len(films)} films)", 100 * float(np.mean(flags)), "%")
sample = [films[i] for i in rng.choice(len(films), min(30, len(films)), replace=False)]
for name, change in VARIANTS.items():
    flags = [diagnoser.diagnose(change(g), method=None).ood_flag for g in sample]
    report(f"OOD flagged, {len(sample)} test films, {name}", 100 * float(np.mean(flags)), "%")
