"""Backbone name -> Keras application, its own preprocess function, last conv layer, weights.

Models take grayscale films replicated to three channels in 0..255; each backbone's own
`preprocess_input` runs inside the model (the `BackbonePreprocess` layer), so a saved model
can never be fed with another backbone's scaling.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from pneumo_core.choices import BACKBONES as BACKBONE_NAMES
from pneumo_core.errors import ConfigError, WeightsError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    application: Callable
    preprocess: Callable
    last_conv: str
    note: str


BACKBONES = {
    spec.name: spec for spec in (
        BackboneSpec("resnet50", keras.applications.ResNet50, keras.applications.resnet50.preprocess_input,
                     "conv5_block3_out", "original design; 25 M parameters, ~30 img/s on 2 CPU cores"),
        BackboneSpec("mobilenet_v2", keras.applications.MobileNetV2,
                     keras.applications.mobilenet_v2.preprocess_input,
                     "out_relu", "3.5 M parameters, ~125 img/s on 2 CPU cores; default"),
        BackboneSpec("efficientnet_b0", keras.applications.EfficientNetB0,
                     keras.applications.efficientnet.preprocess_input,
                     "top_activation", "5.3 M parameters, ~90 img/s on 2 CPU cores"),
    )
}


def get_spec(name: str) -> BackboneSpec:
    """The spec of a backbone named in choices.BACKBONES; ConfigError for any other name."""
    if name not in BACKBONE_NAMES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    return BACKBONES[name]


def resolve_weights(backbone: str, weights: str, weights_dir: Path) -> str | None:
    """'auto' | 'imagenet' | 'none' | a file path -> 'imagenet', None, or an existing file path.

    'auto' takes a local file named after the backbone in `weights_dir` (e.g.
    mobilenet_v2_1.0_224_imagenet_notop.weights.h5) and falls back to downloading ImageNet weights.
    """
    get_spec(backbone)
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if weights == "auto":
        local = sorted(Path(weights_dir).glob(f"{backbone}*.h5")) if Path(weights_dir).is_dir() else []
        return str(local[0]) if local else "imagenet"
    if not Path(weights).is_file():
        raise WeightsError(f"weights file {weights} does not exist; pass an existing .h5 file, "
                           f"'imagenet' (needs internet) or 'none'.")
    return str(weights)


@keras.saving.register_keras_serializable(package="pneumo")
class BackbonePreprocess(keras.layers.Layer):
    """The backbone's own `preprocess_input`, as a layer saved with the model."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._fn = get_spec(backbone).preprocess

    def call(self, inputs):
        return self._fn(inputs)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def build_backbone(name: str, image_size: int, weights: str | None) -> keras.Model:
    """The convolutional part of `name` (no top), as a nested model called 'backbone'."""
    spec = get_spec(name)
    local_file = weights not in (None, "imagenet")
    try:
        model = spec.application(include_top=False, input_shape=(image_size, image_size, 3),
                                 weights=None if local_file else weights)
    except Exception as error:  # Keras raises several types when the download fails
        if weights != "imagenet":
            raise
        raise WeightsError(
            f"ImageNet weights for {name} could not be downloaded ({type(error).__name__}); "
            f"without internet, pass --weights PATH to a local .h5 file (or put it in the "
            f"weights dir, PNEUMO_WEIGHTS_DIR) or --weights none.") from None
    if local_file:
        try:
            model.load_weights(weights)
        except Exception as error:
            raise WeightsError(f"{weights} does not fit {name} without top ({error}); pass the "
                               f"'notop' weights file made for this backbone.") from None
    model.name = "backbone"
    return model
