"""Fine-tuning throughput of the default model on this machine: float32 vs mixed precision, with and without XLA.

The model is `train --fine-tune-epochs`'s: MobileNetV2 at 224 px, the top fifth of the backbone trainable with
its BatchNorm frozen, a sigmoid head; Adam, binary cross-entropy, random films (the cost does not depend on
them). Keras alone (no pneumo_core, no weights file), so the same script also runs on a GPU box whose Python has
Keras on JAX but no TensorFlow (`KERAS_BACKEND=jax`). Prints one `bench:` line per configuration.

    python bench/fine_tune_step.py [--batch 32 128] [--steps 20]
"""
from __future__ import annotations

import argparse
import time

import keras
import numpy as np


def fine_tune_model(size: int) -> keras.Model:
    backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None,
                                              pooling="avg")
    cut = int(len(backbone.layers) * 0.8)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input((size, size, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(backbone(inputs, training=False))
    return keras.Model(inputs, outputs)


def images_per_second(policy: str, xla: bool, batch: int, steps: int, size: int = 224) -> float:
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = fine_tune_model(size)
    adam = keras.optimizers.Adam(1e-5)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(adam) if policy == "mixed_float16" else adam,
                  loss="binary_crossentropy", jit_compile=xla)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 2, (batch, 1)).astype(np.float32)
    for _ in range(3):  # compile and warm up
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))  # wait for the device
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    backend = keras.backend.backend()
    gpu = False
    if backend == "jax":
        import jax
        gpu = jax.default_backend() == "gpu"
    elif backend == "tensorflow":
        import tensorflow as tf
        gpu = bool(tf.config.list_physical_devices("GPU"))
    # On a CPU float16 is emulated (slower); under JAX every step is XLA-compiled whatever jit_compile says.
    policies = ["float32", "mixed_float16", "mixed_bfloat16"] if gpu else ["float32"]
    xla_options = [True] if backend == "jax" else [False, True]
    where = f"{backend} on {'GPU' if gpu else 'CPU'}"
    for batch in args.batch:
        for policy in policies:
            for xla in xla_options:
                rate = images_per_second(policy, xla, batch, args.steps)
                print(f"bench: fine-tuning MobileNetV2@224, {where}, batch {batch}, {policy}"
                      f"{', XLA' if xla else ''} = {rate:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
