"""Keras Tuner trials per minute on cached features of the real size (MobileNetV2: 1280-d)."""
import tempfile
import time

import numpy as np
from common import report

from pneumo_core.learn.data import class_weights
from pneumo_core.learn.tuning import tune_head

rng = np.random.default_rng(0)
n_train, n_val, dim, trials = 3648, 783, 1280, 20  # the shared set: one vector per training film
labels = rng.random(n_train + n_val) < 0.74
features = (rng.normal(0, 1, (n_train + n_val, dim)) + 0.15 * labels[:, None]).astype(np.float32)
x, y = features[:n_train], labels[:n_train].astype(np.float32)
with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    tune_head(x, y, features[n_train:], labels[n_train:].astype(np.float32), class_weights(y), directory, trials)
    minutes = (time.perf_counter() - start) / 60
report("tuning trials per minute on the feature cache", trials / minutes, "trials/min", ">= 30")
