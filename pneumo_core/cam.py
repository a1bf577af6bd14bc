"""Class activation maps: Grad-CAM, Grad-CAM++ and Score-CAM.

`BaseCAM` owns the mechanics — reaching inside the nested backbone, one compiled pass for
activations and gradients, the weighted sum, ReLU, normalisation and resizing back to the
original film. Each method is a small subclass that overrides `channel_weights` only.

Why not `model.get_layer(conv).output` on the full model: the backbone is a nested model, and a
layer's symbolic output inside it belongs to the backbone's own graph, so a model built from the
outer input to it fails with "Graph disconnected". Instead we build a two-output model inside
the backbone's graph (conv activations, backbone output) and run the outer pieces around it.
"""
from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf

from .backbones import get_spec
from .choices import CAM_METHODS
from .errors import ConfigError
from .model import parts


class BaseCAM:
    name = "base"

    def __init__(self, model: keras.Model, layer: str | None = None):
        self.preprocess, backbone, self.classifier = parts(model)
        layer = layer or get_spec(self.preprocess.backbone).last_conv
        self._conv_and_output = keras.Model(backbone.inputs,
                                            [backbone.get_layer(layer).output, backbone.output])
        self.input_size = model.input_shape[1]
        self._compiled = tf.function(self._activations_and_gradients, reduce_retracing=True)

    def _activations_and_gradients(self, images):
        with tf.GradientTape() as tape:
            activations, feature_map = self._conv_and_output(self.preprocess(images), training=False)
            logit = self.classifier(feature_map, training=False)[:, 0]
        # The pooled feature map is the film's embedding (what the feature cache and ood.py use).
        return activations, tape.gradient(logit, activations), logit, tf.reduce_mean(feature_map, axis=[1, 2])

    def target_score(self, images: np.ndarray, sign: float) -> np.ndarray:
        """The explained score (logit, negated for NORMAL) of a batch of model inputs."""
        _, feature_map = self._conv_and_output(self.preprocess(images), training=False)
        return sign * self.classifier(feature_map, training=False).numpy()[:, 0]

    def channel_weights(self, images, activations, gradients, signs) -> np.ndarray:
        """(N, C) weight of each activation channel; the one thing a method defines.

        `gradients` are those of the explained score; `signs` (N,) is +1 where that score is the
        PNEUMONIA logit and -1 where it is the NORMAL one (the negated logit).
        """
        raise NotImplementedError

    def explain(self, images: np.ndarray, target: int = 1,
                threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(maps in [0, 1] at input resolution (N, S, S), probability of PNEUMONIA (N,)).

        `target` 1 explains PNEUMONIA, 0 NORMAL; with a `threshold`, each film's own call is
        explained. One pass gives everything: the explained logit is also the prediction, and the
        NORMAL score is the negated logit, so its gradients are the negated gradients.
        """
        return self.explain_and_embed(images, target, threshold)[:2]

    def explain_and_embed(self, images: np.ndarray, target: int = 1,
                          threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`explain` plus each film's pooled backbone embedding (N, D), from the same forward pass."""
        images = np.asarray(images, np.float32)
        activations, gradients, logit, embeddings = (t.numpy() for t in self._compiled(tf.constant(images)))
        probability = 1.0 / (1.0 + np.exp(-logit))
        if threshold is None:
            signs = np.full(len(images), 1.0 if target == 1 else -1.0, np.float32)
        else:
            signs = np.where(probability >= threshold, 1.0, -1.0).astype(np.float32)
        gradients = gradients * signs[:, None, None, None]
        weights = self.channel_weights(images, activations, gradients, signs)
        maps = np.maximum(np.einsum("nhwc,nc->nhw", activations, weights), 0)
        peak = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
        maps = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
        maps = np.stack([cv2.resize(m, (self.input_size, self.input_size), interpolation=cv2.INTER_LINEAR)
                         for m in maps]).clip(0, 1)
        return maps, probability, embeddings

    def __call__(self, images: np.ndarray, target: int = 1) -> np.ndarray:
        """Maps in [0, 1] at input resolution, (N, S, S), explaining PNEUMONIA (target 1) or NORMAL (0)."""
        return self.explain(images, target)[0]


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: channel weight = spatial mean of the gradient."""
    name = "gradcam"

    def channel_weights(self, images, activations, gradients, signs):
        return gradients.mean(axis=(1, 2))


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhay et al. 2018: positive gradients weighted by second/third-order terms."""
    name = "gradcam++"

    def channel_weights(self, images, activations, gradients, signs):
        g2, g3 = gradients ** 2, gradients ** 3
        denominator = 2 * g2 + activations.sum(axis=(1, 2), keepdims=True) * g3
        alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=np.abs(denominator) > 1e-12)
        return (alpha * np.maximum(gradients, 0)).sum(axis=(1, 2))


class ScoreCAM(BaseCAM):
    """Wang et al. 2020: channel weight = softmax of the score of the input masked by that channel.

    Gradient-free; costs one forward pass per channel used, so only the `top` channels with the
    highest mean activation are scored.
    """
    name = "scorecam"
    top = 32
    batch = 32

    def channel_weights(self, images, activations, gradients, signs):
        weights = np.zeros((len(activations), activations.shape[-1]), np.float32)
        for n, (image, acts, sign) in enumerate(zip(images, activations, signs)):
            channels = np.argsort(acts.mean(axis=(0, 1)))[::-1][: self.top]
            masks = np.stack([cv2.resize(acts[:, :, c], (self.input_size, self.input_size)) for c in channels])
            low = masks.min(axis=(1, 2), keepdims=True)
            span = masks.max(axis=(1, 2), keepdims=True) - low
            masks = np.divide(masks - low, span, out=np.zeros_like(masks), where=span > 0)
            masked = image[None] * masks[:, :, :, None]
            scores = np.concatenate([self.target_score(masked[i:i + self.batch], float(sign))
                                     for i in range(0, len(masked), self.batch)])
            weights[n, channels] = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        return weights


METHODS = {cls.name: cls for cls in (GradCAM, GradCAMPlusPlus, ScoreCAM)}


def make_cam(model: keras.Model, method: str = "gradcam", layer: str | None = None) -> BaseCAM:
    """A CAM of `method` (choices.CAM_METHODS) over a model made by model.assemble.

    `layer`: the backbone layer explained (default: the backbone's last convolution). The result maps
    (N, S, S, 3) model inputs to (N, S, S) heatmaps in [0, 1] (`__call__`, `explain`).
    """
    if method not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    return METHODS[method](model, layer)


def to_original_size(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Stretch an (S, S) map back over the original (H, W) film (the model saw the whole film squashed).

    Returns:
        (H, W) float32 in [0, 1].
    """
    return cv2.resize(heatmap, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR).clip(0, 1)


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The film with its heatmap blended on top in the JET colour map.

    Args:
        gray: (H, W) uint8 film; heatmap: (H, W) in [0, 1]; alpha: the heatmap's opacity 0..1.
    Returns:
        (H, W, 3) uint8 RGB.
    """
    colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heatmap), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    film = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(colour, float(alpha), film, 1 - float(alpha), 0)
