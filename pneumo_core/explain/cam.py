"""Class activation maps: Grad-CAM, Grad-CAM++ and Score-CAM.

`BaseCAM` owns the mechanics — reaching inside the nested backbone, one compiled pass for
activations and gradients, the weighted sum, ReLU, normalisation and resizing back to the
original film. Each method is a small subclass that overrides `channel_weights` only.

Why not `model.get_layer(conv).output` on the full model: the backbone is a nested model, and a
layer's symbolic output inside it belongs to the backbone's own graph, so a model built from the
outer input to it fails with "Graph disconnected". Instead we build a two-output model inside
the backbone's graph (conv activations, backbone output) and run the outer pieces around it.

`BaseCAM.deletion_curve` measures how faithful a heatmap is (the score as its hottest pixels are
removed). Drawing, restricting to the chest and storing heatmaps is `heatmap.py`'s (no TensorFlow).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import cv2
import keras
import numpy as np
import tensorflow as tf

from pneumo_core.choices import CAM_METHODS
from pneumo_core.errors import ConfigError
from pneumo_core.explain.heatmap import overlay, to_original_size  # noqa: F401  (drawing lives in heatmap.py, without TensorFlow)
from pneumo_core.learn.backbones import get_spec
from pneumo_core.learn.model import parts


@dataclass(frozen=True)
class DeletionCurve:
    """Probability of PNEUMONIA as a growing share of pixels is removed, hottest first and at random.

    `area` and `random_area` are the mean probability over the curve (0..1): the smaller `area` is
    than `random_area`, the more the heatmap shows what the score depends on.
    """
    fractions: np.ndarray
    probabilities: np.ndarray
    random_probabilities: np.ndarray
    area: float
    random_area: float


class GradientPass:
    """One compiled pass of a model: last-convolution activations, their gradients, the logit and the embedding.

    Every CAM method of one model runs the same pass (they differ in `BaseCAM.channel_weights` only), so
    the methods share it (`gradient_pass`): tracing it costs 2.5-3.7 s of CPU per model on this machine,
    paid once rather than once per method.
    """

    def __init__(self, model: keras.Model, layer: str | None = None):
        self.preprocess, backbone, self.classifier = parts(model)
        layer = layer or get_spec(self.preprocess.backbone).last_conv
        self.conv_and_output = keras.Model(backbone.inputs, [backbone.get_layer(layer).output, backbone.output])
        self.compiled = tf.function(self._activations_and_gradients, reduce_retracing=True)

    def _activations_and_gradients(self, images):
        with tf.GradientTape() as tape:
            activations, feature_map = self.conv_and_output(self.preprocess(images), training=False)
            logit = self.classifier(feature_map, training=False)[:, 0]
        # The pooled feature map is the film's embedding (what the feature cache and ood.py use).
        return activations, tape.gradient(logit, activations), logit, tf.reduce_mean(feature_map, axis=[1, 2])


_passes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> {layer: GradientPass}
_passes_lock = threading.Lock()


def gradient_pass(model: keras.Model, layer: str | None = None) -> GradientPass:
    """The model's `GradientPass` for `layer` (None: the backbone's last convolution), made once per model.

    Kept while the model lives (a weak reference): a version unloaded by the dashboard takes its pass with it.
    """
    with _passes_lock:
        by_layer = _passes.setdefault(model, {})
        if layer not in by_layer:
            by_layer[layer] = GradientPass(model, layer)
        return by_layer[layer]


class BaseCAM:
    name = "base"

    def __init__(self, model: keras.Model, layer: str | None = None):
        shared = gradient_pass(model, layer)
        self.preprocess, self.classifier = shared.preprocess, shared.classifier
        self._conv_and_output, self._compiled = shared.conv_and_output, shared.compiled
        self.input_size = model.input_shape[1]

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

    def deletion_curve(self, image: np.ndarray, heatmap: np.ndarray, steps: int = 10,
                       up_to: float = 0.5, seed: int = 0) -> DeletionCurve:
        """How fast the probability of PNEUMONIA falls as the hottest pixels are removed (a faithfulness check).

        Removed pixels are replaced by a heavily blurred copy of the film (a flat grey would be a new,
        unnatural feature). The same removal in random order is the baseline: a heatmap that points
        at what the score depends on falls faster (smaller area) than random order.

        Args:
            image: one model input (S, S, 3), as `PneumoModel.inputs` makes it.
            heatmap: (S, S) map, uint8 or [0, 1]; ties (e.g. the zeros outside the chest) in random order.
            steps: points on the curve after the first; up_to: largest share of pixels removed.
        Returns:
            A DeletionCurve (fractions, probabilities along the heatmap's order and random order, areas).
        """
        image = np.asarray(image, np.float32)
        size = image.shape[0]
        rng = np.random.default_rng(seed)
        values = np.asarray(heatmap, np.float32).reshape(-1)
        if values.size != size * size:
            values = cv2.resize(np.asarray(heatmap, np.float32), (size, size)).reshape(-1)
        jitter = rng.random(values.size)
        orders = [np.lexsort((jitter, -values)), rng.permutation(values.size)]
        blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=size / 16).reshape(-1, 3)
        fractions = np.linspace(0.0, up_to, steps + 1)
        batch = []
        for order in orders:
            for fraction in fractions:
                flat = image.reshape(-1, 3).copy()
                removed = order[: int(round(fraction * values.size))]
                flat[removed] = blurred[removed]
                batch.append(flat.reshape(image.shape))
        probability = 1.0 / (1.0 + np.exp(-self.target_score(np.stack(batch), 1.0)))
        heat, random = probability[: len(fractions)], probability[len(fractions):]
        area = lambda p: float(np.trapezoid(p, fractions) / up_to)  # noqa: E731
        return DeletionCurve(fractions, heat, random, area(heat), area(random))

    def __call__(self, images: np.ndarray, target: int = 1) -> np.ndarray:
        """Maps in [0, 1] at input resolution, (N, S, S), explaining PNEUMONIA (target 1) or NORMAL (0)."""
        return self.explain(images, target)[0]


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: channel weight = spatial mean of the gradient. The default method."""
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

