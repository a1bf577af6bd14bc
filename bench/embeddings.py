"""Embeddings per second: a predict_on_batch loop vs model.predict, and the full file pipeline."""
import numpy as np
from common import SHARED_DATA, report, timed

from pneumo_core.learn.data import load_dataset
from pneumo_core.learn.features import embed
from pneumo_core.learn.model import build_embedder

N, BATCH = 128, 32
images = np.random.default_rng(0).uniform(0, 255, (N, 224, 224, 3)).astype(np.float32)
for backbone in ("mobilenet_v2", "resnet50"):
    model = build_embedder(backbone, 224, None)
    loop = lambda: [model.predict_on_batch(images[i:i + BATCH]) for i in range(0, N, BATCH)]  # noqa: E731
    predict = lambda: model.predict(images, batch_size=BATCH, verbose=0)  # noqa: E731
    loop(), predict()  # warm up: trace both paths once
    report(f"{backbone} embeddings/s, predict_on_batch loop", N / timed(loop, 3).min(), "img/s")
    report(f"{backbone} embeddings/s, model.predict", N / timed(predict, 3).min(), "img/s")

if (SHARED_DATA / "train").is_dir():
    paths = load_dataset(SHARED_DATA).frame.path[:256].tolist()
    model = build_embedder("mobilenet_v2", 224, None)
    embed(model, paths[:32], 224, "equalize")
    report("mobilenet_v2 feature caching from JPEG files (decode + equalise + embed)",
           len(paths) / timed(lambda: embed(model, paths, 224, "equalize"), 1).min(), "img/s")
