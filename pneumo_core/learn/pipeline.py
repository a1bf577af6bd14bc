"""The image pipeline: model inputs read from files, plain or as reproducible random views, in
parallel tf.data batches (for training, embedding and scoring).
"""
from __future__ import annotations

import numpy as np

from pneumo_core.imaging.augment import random_view
from pneumo_core.imaging.films import read_image
from pneumo_core.imaging.preprocessing import prepare, resize, to_model_input
from pneumo_core.settings import Augmentation


def load_view(path: str, size: int, normalisation: str, augmentation: Augmentation | None = None,
              seed: int = 0) -> np.ndarray:
    """One model input from a file: the plain view, or a reproducible random view when augmenting.

    Returns:
        (size, size, 3) float32 in 0..255.
    """
    gray = read_image(path)
    if augmentation is None:
        return prepare(gray, size, normalisation)
    rng = np.random.default_rng(seed)
    return to_model_input(random_view(resize(gray, size), augmentation, rng), normalisation)


def image_batches(paths, size: int, normalisation: str, augmentation: Augmentation | None = None,
                  seed: int = 0, batch_size: int = 32, labels=None, shuffle: bool = False,
                  repeat: bool = False):
    """A tf.data pipeline of model inputs (and labels if given), decoded in parallel.

    The k-th image drawn (image i) is augmented with the seed (seed, k, i), so runs are reproducible.

    Args:
        paths: N image files; size, normalisation: the model input; augmentation, seed: random views;
        labels: (N,) 0/1 to yield with the images; shuffle, repeat: for training.
    Returns:
        A tf.data.Dataset of (B, size, size, 3) float32 batches, or of (batch, (B,) float32 labels) pairs.
    """
    import tensorflow as tf

    paths = list(map(str, paths))
    order = tf.data.Dataset.range(len(paths))
    if shuffle:
        order = order.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        order = order.repeat()
    position_and_index = order.enumerate()  # (k, i): the k-th image drawn is image i

    def load(k, i):
        view_seed = int(np.random.SeedSequence([seed, int(k), int(i)]).generate_state(1)[0])
        return load_view(paths[int(i)], size, normalisation, augmentation, view_seed)

    def load_tf(k, i):
        image = tf.numpy_function(load, [k, i], tf.float32)
        image.set_shape((size, size, 3))
        if labels is None:
            return image
        return image, tf.gather(tf.constant(np.asarray(labels, np.float32)), i)

    return position_and_index.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)
