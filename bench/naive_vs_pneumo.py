"""The original design's naive pipeline vs Pneumo's, in one run on this machine, same trials and epochs.

Naive: every tuning trial trains the full model (frozen MobileNetV2 + head) on images with `model.fit`,
scores with `model.predict`, explains with an eager GradientTape. Pneumo: the backbone embeds each film
once (feature cache), trials train the head on vectors (`tune_head`), scoring uses `predict_on_batch`
and the compiled CAM. Writes docs/bench_naive_vs_pneumo.{json,html,png} (Plotly) and prints a table.
Real films from the shared train set (patient split), ImageNet MobileNetV2 from ../shared/weights.
"""
import json
import os
import tempfile
import time

import keras
import numpy as np
import plotly.graph_objects as go
from common import REPO, SHARED_DATA, SHARED_WEIGHTS, report, save_chart, timed

from pneumo_core.explain.cam import make_cam
from pneumo_core.learn.data import class_weights, load_dataset
from pneumo_core.learn.features import FeatureCache
from pneumo_core.learn.model import PneumoModel, assemble, build_classifier, build_embedder
from pneumo_core.learn.pipeline import image_batches
from pneumo_core.learn.tuning import head_from_hp, tune_head

TRAIN, VAL, TRIALS, EPOCHS, SIZE = int(os.environ.get("BENCH_FILMS", 160)), 64, 3, 2, 224
dataset = load_dataset(SHARED_DATA, 0.15, 0.15, 42)
train = dataset.split("train").sample(TRAIN, random_state=0)
val = dataset.split("val").sample(VAL, random_state=0)
y_train, y_val = train.label.to_numpy(np.float32), val.label.to_numpy(np.float32)
weights = class_weights(train.label)
results = {}


def naive() -> None:
    """T trials: full model on images (backbone re-run every epoch), model.fit, model.predict."""
    import keras_tuner as kt
    embedder = build_embedder("mobilenet_v2", SIZE, str(SHARED_WEIGHTS))
    backbone = embedder.get_layer("backbone")
    backbone.trainable = False
    for _ in range(TRIALS):
        # The search space's defaults as every trial's head: the cost is measured, not the quality.
        head = head_from_hp(kt.HyperParameters(), 1280)
        model = assemble("mobilenet_v2", backbone, build_classifier(backbone.output_shape[1:], [head]))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        model.fit(image_batches(train.path, SIZE, "equalize", labels=train.label), epochs=EPOCHS,
                  validation_data=image_batches(val.path, SIZE, "equalize", labels=val.label),
                  class_weight=weights, verbose=0)
        model.predict(image_batches(val.path, SIZE, "equalize"), verbose=0)


def pneumo() -> None:
    """Embed once (cold cache), then T trials of the head on vectors."""
    with tempfile.TemporaryDirectory() as home:
        cache = FeatureCache(home, "mobilenet_v2", str(SHARED_WEIGHTS), SIZE, "equalize",
                             lambda: build_embedder("mobilenet_v2", SIZE, str(SHARED_WEIGHTS)))
        x_train, x_val = cache.get(train.path), cache.get(val.path)
        tune_head(x_train, y_train, x_val, y_val, weights, home, TRIALS, EPOCHS)


for name, run in (("naive", naive), ("pneumo", pneumo)):
    start = time.perf_counter()
    run()
    results[name] = {"tuning wall time (s)": time.perf_counter() - start}
    results[name]["trials/min"] = TRIALS / results[name]["tuning wall time (s)"] * 60

# Inference and explanation on one assembled model (ImageNet backbone, an untrained head: cost only).
embedder = build_embedder("mobilenet_v2", SIZE, str(SHARED_WEIGHTS))
base = embedder.get_layer("backbone")
model = assemble("mobilenet_v2", base, build_classifier(base.output_shape[1:], [head_from_hp(
    __import__("keras_tuner").HyperParameters(), 1280)]))
scorer = PneumoModel(model, {"image_size": SIZE, "normalisation": "equalize", "threshold": 0.5})
films = scorer.inputs([np.random.default_rng(i).integers(0, 255, (900, 800)).astype(np.uint8) for i in range(32)])
cam = make_cam(model, "gradcam")
eager_cam = cam._activations_and_gradients  # the same computation, not compiled: one eager tape per film
paths = {"naive": (lambda: [model.predict(f[None], verbose=0) for f in films],
                   lambda: model.predict(films, batch_size=32, verbose=0), lambda: eager_cam(films[:1])),
         "pneumo": (lambda: [model.predict_on_batch(f[None]) for f in films],
                    lambda: scorer.predict_inputs(films), lambda: cam.explain(films[:1]))}
for name, (single, batch, explain) in paths.items():
    single(), batch(), explain(), explain()  # warm up: trace each path
    results[name]["single-film predict latency p50 (ms)"] = float(np.median(timed(single, 3))) / len(films) * 1000
    results[name]["batch inference (img/s)"] = len(films) / float(timed(batch, 3).min())
    results[name]["Grad-CAM latency p50 (ms)"] = float(np.median(timed(explain, 10))) * 1000

setup = {"films": {"train": TRAIN, "val": VAL}, "trials": TRIALS, "epochs": EPOCHS, "image_size": SIZE,
         "backbone": "mobilenet_v2 (ImageNet, frozen)", "cpu_cores": os.cpu_count()}
print(f"\n{'metric':<40} {'naive':>10} {'pneumo':>10} {'speed-up':>9}")
gains = {}
for metric in results["naive"]:
    a, b = results["naive"][metric], results["pneumo"][metric]
    gain = gains[metric] = b / a if "img/s" in metric or "/min" in metric else a / b
    print(f"{metric:<40} {a:>10.1f} {b:>10.1f} {gain:>8.1f}x")
    report(f"naive vs pneumo: {metric}", f"{a:.3g} vs {b:.3g}")
docs = REPO / "docs"
(docs / "bench_naive_vs_pneumo.json").write_text(json.dumps({"setup": setup, "results": results}, indent=1))
# One bar per metric, Pneumo's gain over naive (higher or lower is better depending on the metric, so
# the raw values would need two scales); the raw values are the bar's label.
labels = [f"{m}: {results['naive'][m]:.3g} -> {results['pneumo'][m]:.3g}" for m in gains]
figure = go.Figure(go.Bar(x=list(gains.values()), y=labels, orientation="h", marker_color="#2a9d8f",
                          text=[f"{g:.1f}x" for g in gains.values()], textposition="outside"))
figure.add_vline(x=1, line_dash="dot", annotation_text="no gain")
figure.update_layout(title=f"Pneumo vs the naive pipeline on {os.cpu_count()} CPU cores: {TRIALS} trials x {EPOCHS} "
                     f"epochs, {TRAIN} films at {SIZE} px", xaxis_title="speed-up (x, naive -> Pneumo)",
                     yaxis_autorange="reversed", margin_l=20, plot_bgcolor="white")
save_chart(figure, "bench_naive_vs_pneumo")
