"""Fine-tuning (`training.fine_tune`) through Keras' `fit`, on a tiny model with a nested backbone.

The rule checked here once, cheaply: the top fifth of the backbone trains, its BatchNormalization and the
rest stay frozen, the trained weights come back into the float32 model, and the history's rows are the
"fine-tune" member's. (A ResNet50 `train` paid ~15 s of graph tracing for the same check; the
multi-worker path, `fit_replicated`, is run by integration/test_distributed_training.py.)
"""
import logging

import cv2
import numpy as np
import pandas as pd
import pytest

SIZE = 16


def backbone_of_fifteen_layers():
    """A nested "backbone" of 15 layers (its input included): the cut, int(15 * 0.8), falls at layer 12,
    so conv_5 and conv_6 train, while bn_5 (in the top fifth, but BatchNorm) and everything below stay frozen."""
    import keras
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for block in (1, 2, 3):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"conv_{block}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{block}")(x)
        x = keras.layers.ReLU(name=f"relu_{block}")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_4")(x)
    x = keras.layers.ReLU(name="relu_4")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_5")(x)
    x = keras.layers.BatchNormalization(name="bn_5")(x)
    x = keras.layers.Conv2D(8, 1, name="conv_6")(x)
    return keras.Model(inputs, x, name="backbone")


@pytest.fixture
def films(tmp_path):
    """(train, val): 24 and 8 films with labels, bright-spotted when pneumonia."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(32):
        film = rng.integers(40, 120, (64, 64)).astype(np.uint8)
        label = i % 2
        if label:
            film[16:40, 16:40] = 230
        path = tmp_path / f"film{i}.png"
        cv2.imwrite(str(path), film)
        rows.append({"path": str(path), "label": label})
    frame = pd.DataFrame(rows)
    return frame[:24].reset_index(drop=True), frame[24:].reset_index(drop=True)


def test_fine_tune_trains_the_top_fifth_of_the_backbone_but_its_batchnorm_and_keeps_the_model_float32(
        films, caplog):
    import keras

    from pneumo_core.learn.model import assemble, build_classifier, build_head
    from pneumo_core.learn.training import fine_tune
    from pneumo_core.settings import TrainConfig

    keras.utils.set_random_seed(0)
    backbone = backbone_of_fifteen_layers()
    model = assemble("mobilenet_v2", backbone, build_classifier(backbone.output_shape[1:], [build_head(8, units=4)]))
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in backbone.layers}
    train, val = films
    # On a CPU, both GPU-only options are ignored with a note, and the copy that trains stays float32.
    config = TrainConfig(image_size=SIZE, normalisation="none", fine_tune_epochs=2, mixed_precision=True, xla=True)
    with caplog.at_level(logging.WARNING, logger="pneumo_core.learn.training"):
        history = fine_tune(model, train, val, config, {0: 1.0, 1: 1.0})

    trained = {layer.name for layer in backbone.layers if layer.trainable_weights}
    assert trained == {"conv_5", "conv_6"}
    assert not backbone.get_layer("bn_5").trainable and backbone.get_layer("conv_5").trainable
    for layer in backbone.layers:
        moved = [not np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights())]
        # the tuned copy's weights came back into `model` (its own were never trained): the top two moved
        assert all(moved) if layer.name in trained else not any(moved), layer.name
    assert {w.dtype for w in model.weights} == {"float32"}
    assert {layer.dtype_policy.name for layer in backbone.layers} == {"float32"}
    assert "mixed precision ignored" in caplog.text and "XLA ignored" in caplog.text

    assert list(history.member) == ["fine-tune", "fine-tune"] and list(history.epoch) == [0, 1]
    assert {"loss", "val_loss", "val_auc"} <= set(history.columns)
    assert np.isfinite(history[["loss", "val_loss", "val_auc"]].to_numpy()).all()
