"""Data-parallel fine-tuning on `tf.distribute`, mixed precision and XLA, for GPU servers and clusters.

One 2-core machine is the default, and there nothing changes: the default strategy, float32, no XLA.

- `mirrored`: one process, every local GPU (synchronous all-reduce); on a CPU-only box, one replica.
- `multiworker`: one process per machine, the cluster described by `TF_CONFIG` (read by TensorFlow);
  task 0 of the `worker` job is the chief, the only one that writes to the registry.

Only the fine-tuning copy of the model runs under the strategy and the precision policy: caching,
tuning and head training stay on the cheap cached-features path, and the saved model stays float32,
so a model trained on a GPU server scores films on a CPU laptop at full speed.
"""
from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

from pneumo_core.choices import STRATEGIES
from pneumo_core.errors import ConfigError

logger = logging.getLogger(__name__)
# Kept float32 under mixed precision: the last logit's scaling and the sigmoid (numerical stability).
FLOAT32_LAYERS = ("calibration", "probability")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy called `name`; create it before any other TensorFlow work."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    strategy = (tf.distribute.MirroredStrategy() if name == "mirrored"
                else tf.distribute.MultiWorkerMirroredStrategy())
    workers = strategy.cluster_resolver.cluster_spec().num_tasks("worker") if name == "multiworker" else 1
    logger.info("strategy: %s, %d replicas in sync, %d worker(s)%s", name, strategy.num_replicas_in_sync, workers,
                "" if is_chief(strategy) else ", this one is not the chief")
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().jobs)


def wait_for_every_worker(strategy: tf.distribute.Strategy) -> None:
    """Block until every worker of a multi-worker cluster gets here (a one-number all-reduce); else return.

    Workers that are done wait here for the chief to finish registering: one that exits earlier stops
    its heartbeats, and the chief's coordination service then reports the cluster as crashed.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def one():
        return tf.constant(1.0)

    @tf.function
    def all_reduce():
        return strategy.reduce("SUM", strategy.run(one), axis=None)

    all_reduce()


def gpu_count() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def training_copy(model: keras.Model, mixed_precision: bool) -> keras.Model:
    """A copy of `model` with its weights, built in the current strategy scope; float16 compute if asked.

    Call it inside `strategy.scope()`, so its variables are mirrored across replicas.
    """
    def clone(layer):
        config = layer.get_config()
        if mixed_precision and "dtype" in config and layer.name not in FLOAT32_LAYERS:
            config["dtype"] = "mixed_float16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def optimizer(learning_rate: float, mixed_precision: bool) -> keras.optimizers.Optimizer:
    """Adam; under mixed precision wrapped in dynamic loss scaling (float16 gradients underflow otherwise)."""
    adam = keras.optimizers.Adam(learning_rate)
    return keras.optimizers.LossScaleOptimizer(adam) if mixed_precision else adam


def fit_replicated(model: keras.Model, strategy: tf.distribute.Strategy, batches: tf.data.Dataset, steps: int,
                   class_weight: dict) -> float:
    """One epoch of `steps` synchronous steps of class-weighted binary cross-entropy; returns the mean loss.

    The loop Keras' `fit` runs, written with `strategy.run`, for strategies `fit` does not support.
    `batches` yields global batches (images, labels) and must repeat; the model is compiled in scope.
    """
    weights = tf.constant([class_weight[0], class_weight[1]], tf.float32)
    global_batch = int(batches.element_spec[0].shape[0] or 32)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            p = tf.clip_by_value(tf.cast(model(images, training=True)[:, 0], tf.float32), 1e-7, 1 - 1e-7)
            per_film = -(labels * tf.math.log(p) + (1 - labels) * tf.math.log(1 - p))
            per_film *= tf.gather(weights, tf.cast(labels, tf.int32))
            loss = tf.nn.compute_average_loss(per_film, global_batch_size=global_batch)
            scaled = model.optimizer.scale_loss(loss)
        variables = model.trainable_variables
        model.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return loss

    if not model.optimizer.built:
        # Its variables made here, not in the step's first trace: a tf.function that creates variables is traced
        # twice (to create them, then without), and each trace of MobileNetV2's training step costs ~1.5 s of CPU.
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)

    @tf.function
    def step(iterator):
        return strategy.reduce("SUM", strategy.run(replica_step, args=next(iterator)), axis=None)

    iterator = iter(strategy.experimental_distribute_dataset(batches))
    return float(np.mean([float(step(iterator)) for _ in range(steps)]))
