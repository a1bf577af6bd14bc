from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset

from pneumo_core.learn.data import load_dataset
from pneumo_core.learn.features import FeatureCache, cache_key
from pneumo_core.learn.pipeline import image_batches
from pneumo_core.settings import Augmentation


def counting_embedder():
    """Stands in for the backbone: a Keras model whose 'features' are per-image channel means, counting the
    images it embeds in a variable (`model.get_layer("count").images`), so calls through a traced function count."""
    import keras

    class CountingMean(keras.layers.Layer):
        def build(self, input_shape):
            self.images = self.add_weight(shape=(), initializer="zeros", trainable=False, name="images")

        def call(self, batch):
            self.images.assign_add(keras.ops.cast(keras.ops.shape(batch)[0], "float32"))
            return keras.ops.mean(batch, axis=(1, 2))

    return keras.Sequential([keras.Input((32, 32, 3)), CountingMean(name="count")])


def embedded(model) -> int:
    """How many images the `counting_embedder` has embedded."""
    return int(model.get_layer("count").images.numpy())


@pytest.fixture
def paths(tmp_path):
    return list(load_dataset(make_dataset(tmp_path / "d", {"train": (6, 6)})).frame.path)


def test_second_request_is_served_from_disk(tmp_path, paths):
    embedder = counting_embedder()
    cache = FeatureCache(tmp_path / "cache", "mobilenet_v2", None, 32, "equalize", lambda: embedder)
    first = cache.get(paths)
    assert embedded(embedder) == len(paths) and first.shape == (len(paths), 3)
    again = FeatureCache(tmp_path / "cache", "mobilenet_v2", None, 32, "equalize", lambda: 1 / 0).get(paths)
    np.testing.assert_array_equal(first, again)  # the lazily built embedder was never needed


def test_the_same_films_by_another_path_share_the_key(tmp_path, paths, monkeypatch):
    base = dict(backbone="mobilenet_v2", weights=None, image_size=32, normalisation="equalize",
                augmentation=None, seed=0)
    (tmp_path / "link").symlink_to(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    relative = [str(Path(p).relative_to(tmp_path)) for p in paths]
    linked = [p.replace(str(tmp_path / "d"), str(tmp_path / "link")) for p in paths]
    assert cache_key(relative, **base) == cache_key(linked, **base) == cache_key(paths, **base)


def test_key_changes_with_everything_that_changes_the_vectors(tmp_path, paths):
    base = dict(backbone="mobilenet_v2", weights=None, image_size=32, normalisation="equalize",
                augmentation=None, seed=0)
    key = cache_key(paths, **base)
    variants = [dict(backbone="resnet50"), dict(image_size=64), dict(normalisation="none"),
                dict(augmentation=Augmentation()), dict(augmentation=Augmentation(), seed=1)]
    keys = {cache_key(paths, **{**base, **v}) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert cache_key(paths[:-1], **base) != key
    with open(paths[0], "ab") as f:  # a file edited in place invalidates the entry too
        f.write(b"\0")
    assert cache_key(paths, **base) != key


def test_augmented_batches_are_reproducible_and_labelled(paths):
    aug = Augmentation()
    first = [b.numpy() for b, _ in image_batches(paths, 32, "equalize", aug, seed=3, batch_size=4,
                                                 labels=[0] * 6 + [1] * 6)]
    second = [b.numpy() for b, _ in image_batches(paths, 32, "equalize", aug, seed=3, batch_size=4,
                                                  labels=[0] * 6 + [1] * 6)]
    other = [b.numpy() for b in image_batches(paths, 32, "equalize", aug, seed=4, batch_size=4)]
    assert len(first) == 3 and first[0].shape == (4, 32, 32, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], other[0])
    batches = image_batches(paths, 32, "none", batch_size=5, labels=list(range(12)))
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert labels.tolist() == list(range(12))  # order kept without shuffling
