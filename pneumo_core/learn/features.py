"""Backbone embeddings cached on disk.

A frozen backbone only needs to see each image once per view, so tuning and head training run
on these vectors instead of images: tens of trials cost seconds, not hours. A cache entry is keyed
by everything that changes the vectors: backbone, weights, image size, intensity normalisation,
augmentation and seed of the view, and the exact image list (paths, sizes, modification times).
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pneumo_core.learn.pipeline import image_batches
from pneumo_core.learn.store import cache_tmp_suffix
from pneumo_core.progress import Progress, Reporter
from pneumo_core.settings import Augmentation, load_settings


def weights_id(weights: str | None) -> str:
    if weights in (None, "imagenet"):
        return str(weights)
    p = Path(weights)
    return f"{p.name}:{p.stat().st_size}"


def cache_key(paths, backbone: str, weights: str | None, image_size: int, normalisation: str,
              augmentation: Augmentation | None, seed: int) -> str:
    digest = hashlib.sha256(json.dumps({
        "backbone": backbone, "weights": weights_id(weights), "size": image_size,
        "normalisation": normalisation, "seed": seed,
        "augmentation": augmentation.to_dict() if augmentation else None,
    }, sort_keys=True).encode())
    for path in paths:
        stat = Path(path).stat()
        # The real path: the same films reached as ../data, /abs/data or through a link share entries.
        digest.update(f"{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def any_batch(model) -> Callable:
    """`model`'s inference as a function traced once for batches of any size.

    Keras' `predict_on_batch` traces again at the first batch of another size (a split's last batch):
    0.75 s of CPU for MobileNetV2 at 32 px, more for bigger backbones and inputs.

    Args:
        model: a built Keras model of one float32 input.
    Returns:
        A function from a (B, ...) batch to the model's output tensor, traced at its first call.
    """
    import tensorflow as tf
    return tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])


def embed(embedder, paths, image_size: int, normalisation: str, augmentation: Augmentation | None = None,
          seed: int = 0, batch_size: int = 32, progress: Progress | None = None,
          run: Callable | None = None) -> np.ndarray:
    """Pooled backbone features of each image file.

    Args:
        embedder: a Keras model from (B, S, S, 3) float32 inputs to (B, D) features (model.build_embedder).
        paths: N image files.
        image_size, normalisation: S and the intensity normalisation of the inputs.
        augmentation, seed: a reproducible random view of each film instead of the plain one.
        progress: counts the films embedded.
        run: `any_batch(embedder)` kept across calls, to trace the embedder once; else its `predict_on_batch`.
    Returns:
        (N, D) float32, in the order of `paths`.
    """
    out, run = [], run or embedder.predict_on_batch
    for batch in image_batches(paths, image_size, normalisation, augmentation, seed, batch_size):
        out.append(np.asarray(run(batch), np.float32))
        if progress:
            progress.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, embedder.output_shape[-1]), np.float32)


class FeatureCache:
    """Embeddings on disk under `directory`, computed by a lazily built embedder on a miss; each `get`
    reports a `caching LABEL` stage to `reporter`."""

    def __init__(self, directory: Path, backbone: str, weights: str | None, image_size: int,
                 normalisation: str, make_embedder: Callable, reporter: Reporter | None = None):
        self.directory, self.reporter = Path(directory), reporter
        self.backbone, self.weights, self.image_size = backbone, weights, image_size
        self.normalisation = normalisation
        self._make_embedder, self._embedder, self._run = make_embedder, None, None
        self.hits = self.misses = 0

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = self._make_embedder()
        return self._embedder

    @property
    def run(self) -> Callable:
        """The embedder's inference, traced once for every split and view this cache embeds (and for
        `training.fit_tta`, which scores views through it): `any_batch(embedder)`."""
        if self._run is None:
            self._run = any_batch(self.embedder)
        return self._run

    def _embed(self, paths, augmentation: Augmentation | None, seed: int, progress: Progress) -> np.ndarray:
        return embed(self.embedder, paths, self.image_size, self.normalisation, augmentation, seed,
                     progress=progress, run=self.run)

    def get(self, paths, augmentation: Augmentation | None = None, seed: int = 0,
            label: str = "features") -> np.ndarray:
        """Features of N image files, (N, D) float32: from disk, else embedded and stored.

        `augmentation` and `seed` ask for a reproducible random view of each film; `label` names the stage.
        """
        paths = [str(p) for p in paths]
        key = cache_key(paths, self.backbone, self.weights, self.image_size, self.normalisation,
                        augmentation, seed)
        file = self.directory / f"{key}.npy"
        progress = Progress(f"caching {label}", len(paths), self.reporter)
        if file.exists():
            self.hits += 1
            os.utime(file)   # marks it recently used for `evict`
            progress.finish("cached")
            return np.load(file)
        self.misses += 1
        vectors = self._embed(paths, augmentation, seed, progress)
        self.directory.mkdir(parents=True, exist_ok=True)
        # A name of its own, as workers sharing the cache folder may compute the same entry at once;
        # with the pid in it, so that a stopped job's leftovers are findable (store.partial_cache_files).
        tmp = file.with_suffix(f".{uuid.uuid4().hex[:8]}{cache_tmp_suffix()}")
        np.save(tmp, vectors)
        tmp.replace(file)
        evict(self.directory, load_settings().feature_cache_mb * 2**20, keep=file)
        return vectors


def evict(cache_dir: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used cache entries until the cache holds at most `max_bytes`.

    Each default-sized entry is ~80 MB (5216 films x 1280 floats x 3 views); without a bound every
    new seed, size or backbone added one for ever. Use is the file's modification time (a hit
    touches it). Files still being written (`*.tmp.npy`) are left alone.

    Args:
        cache_dir: the feature cache folder.
        max_bytes: the size to get under (PNEUMO_FEATURE_CACHE_MB).
        keep: an entry never to evict (the one just written).
    Returns:
        The files removed, oldest first.
    """
    entries = []
    for path in Path(cache_dir).glob("*.npy"):
        if path.name.endswith(".tmp.npy"):
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:   # another process evicted it meanwhile
            continue
        entries.append((stat.st_mtime_ns, stat.st_size, path))
    entries.sort()
    total, removed = sum(size for _, size, _ in entries), []
    for _, size, path in entries:
        if total <= max_bytes:
            break
        if keep is not None and path == Path(keep):
            continue
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed
