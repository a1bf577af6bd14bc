"""Keras Tuner search over the head's hyper-parameters, on cached backbone features.

Searched: dense units, dropout, learning rate and L2 penalty; objective: validation ROC-AUC.
Each trial trains only the small head on vectors held in memory, with `fit_head`: one compiled
function per epoch instead of Keras' general `fit` loop, which halves a trial's time here
(a trial is ~1 s: the per-step and per-epoch bookkeeping of `fit` cost more than the arithmetic).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from pneumo_core.choices import TUNERS
from pneumo_core.errors import ConfigError
from pneumo_core.learn.model import build_head
from pneumo_core.progress import Progress, Reporter

logger = logging.getLogger(__name__)
# Keras Tuner's class for each name in choices.TUNERS (tests/test_choices.py checks they match).
TUNER_CLASSES = {"random": kt.RandomSearch, "hyperband": kt.Hyperband, "bayesian": kt.BayesianOptimization}


def head_from_hp(hp: kt.HyperParameters, feature_dim: int, name: str = "head") -> keras.Model:
    """The head a set of hyper-parameters describes, with its optimizer; also defines the search space."""
    head = build_head(feature_dim, units=hp.Choice("units", [64, 128, 256, 512]),
                      dropout=hp.Float("dropout", 0.0, 0.6, step=0.1),
                      l2=hp.Float("l2", 1e-5, 1e-2, sampling="log"), name=name)
    head.compile(optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 3e-4, 1e-2, sampling="log")))
    return head


def _bce(y, logits) -> float:
    return float(np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))))


def fit_head(head: keras.Model, x, y, validation_data, epochs: int, class_weight: dict,
             batch_size: int = 1024, patience: int = 3, callbacks=(), initial_epoch: int = 0,
             seed: int = 0) -> keras.callbacks.History:
    """Train a compiled head on in-memory vectors with class-weighted binary cross-entropy.

    Stops early on validation ROC-AUC (patience epochs) and keeps the best weights. Logs per
    epoch: loss (weighted, train), val_loss, val_auc, val_accuracy (at probability 0.5).
    """
    x_val, y_val = validation_data
    y_np = np.asarray(y, np.float32).reshape(-1)
    x, y_t = tf.constant(x, tf.float32), tf.constant(y_np.reshape(-1, 1))
    weights = tf.constant(np.where(y_np == 1, class_weight[1], class_weight[0]).astype(np.float32))
    n, optimizer = len(y_np), head.optimizer
    steps = -(-n // batch_size)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    # Its slots now, not on the first step: a function that creates variables is traced twice.
    optimizer.build(head.trainable_variables)

    @tf.function
    def run_epoch(order):
        total = tf.constant(0.0)
        for i in tf.range(steps):
            batch = order[i * batch_size:(i + 1) * batch_size]
            with tf.GradientTape() as tape:
                logits = head(tf.gather(x, batch), training=True)
                loss = loss_fn(tf.gather(y_t, batch), logits, sample_weight=tf.gather(weights, batch))
                if head.losses:
                    loss += tf.add_n(head.losses)
            variables = head.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            total += loss
        return total / steps

    validation_logits = tf.function(lambda v: head(v, training=False))
    x_val_t, y_val = tf.constant(x_val, tf.float32), np.asarray(y_val).reshape(-1)
    history = keras.callbacks.History()
    stopper = keras.callbacks.EarlyStopping("val_auc", mode="max", patience=patience, restore_best_weights=True)
    callback_list = keras.callbacks.CallbackList([stopper, *callbacks, history], model=head)
    rng, logs = np.random.default_rng(seed), {}
    head.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        loss = float(run_epoch(tf.constant(rng.permutation(n))))
        val = np.asarray(validation_logits(x_val_t)).reshape(-1)
        both = 0 < y_val.sum() < len(y_val)
        logs = {"loss": loss, "val_loss": _bce(y_val, val), "val_auc": roc_auc_score(y_val, val) if both else 0.5,
                "val_accuracy": float(((val >= 0) == (y_val == 1)).mean())}
        callback_list.on_epoch_end(epoch, logs)
        if head.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


class HeadHyperModel(kt.HyperModel):
    def __init__(self, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim

    def build(self, hp):
        return head_from_hp(hp, self.feature_dim)

    def fit(self, hp, model, x, y, validation_data, epochs, class_weight, callbacks=(), initial_epoch=0, **_):
        return fit_head(model, x, y, validation_data, epochs, class_weight, callbacks=callbacks,
                        initial_epoch=initial_epoch)


def _trial_counter(progress: Progress) -> keras.callbacks.Callback:
    # Keras Tuner deep-copies callbacks for every trial; a closure is copied by reference,
    # so the count survives the copies.
    def trial_ended(logs):
        progress.update(1)

    return keras.callbacks.LambdaCallback(on_train_end=trial_ended)


def _make_tuner(feature_dim: int, directory: Path, trials: int, epochs: int, algorithm: str, seed: int,
                project: str) -> kt.Tuner:
    if algorithm not in TUNERS:
        raise ConfigError(f"unknown tuner {algorithm!r}; choose one of {', '.join(TUNERS)}")
    # overwrite=True is safe in a shared search too: each tuner (chief, workers) owns its project folder.
    common = dict(objective=kt.Objective("val_auc", "max"), seed=seed, directory=str(directory),
                  project_name=project, overwrite=True)
    hypermodel = HeadHyperModel(feature_dim)
    if algorithm == "hyperband":
        return kt.Hyperband(hypermodel, max_epochs=epochs, factor=3, hyperband_iterations=1, **common)
    return TUNER_CLASSES[algorithm](hypermodel, max_trials=trials, **common)


def tune_head(x_train, y_train, x_val, y_val, class_weight: dict, directory: Path, trials: int = 20,
              epochs: int = 12, algorithm: str = "random", seed: int = 42, tuner_id: str | None = None,
              reporter: Reporter | None = None) -> kt.Tuner:
    """Search head hyper-parameters; returns the finished tuner (best first in its oracle).

    With a `tuner_id` (after `join_search`), this process is a worker of a shared search: it runs the
    trials the chief's oracle hands out, in `directory/tuner_id`, until the oracle says stop.

    Args:
        x_train, y_train: (N, D) float32 features and (N,) labels 0/1 the trials train on.
        x_val, y_val: (M, D) and (M,): the objective, validation ROC-AUC, is measured on these.
        class_weight: {0: w0, 1: w1} loss weights (data.class_weights).
        directory: where the tuner keeps its trials.
        trials, epochs, algorithm, seed: the search (algorithm in choices.TUNERS).
        reporter: receives a `tuning trial` stage, one update per trial.
    Returns:
        The finished Keras Tuner tuner (tuner_summary turns it into plain data).
    """
    tuner = _make_tuner(x_train.shape[1], directory, trials, epochs, algorithm, seed, tuner_id or "head")
    # Hyperband decides its own number of trials (brackets of max_epochs), and a worker runs only its
    # share, so then the total is unknown.
    progress = Progress("tuning trial", trials if algorithm != "hyperband" and not tuner_id else None, reporter)
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, class_weight=class_weight,
                 callbacks=[_trial_counter(progress)], verbose=0)
    return tuner


def join_search(role: str, oracle: str, tuner_id: str = "") -> str:
    """Make this process the chief or a worker of a shared search at `oracle` (HOST:PORT); returns its id.

    Keras Tuner reads its distribution settings from these environment variables itself. The chief
    listens on HOST:PORT (0.0.0.0 for every interface); workers connect to it. A worker without an
    id gets a random one: ids must be unique, and one containing 'chief' would make it a chief.
    """
    host, _, port = oracle.rpartition(":")
    if role not in ("chief", "worker") or not host or not port.isdigit():
        raise ConfigError(f"distributed tuning needs a role (chief or worker) and the oracle's HOST:PORT, "
                         f"got {role!r} and {oracle!r}")
    if role == "worker" and "chief" in tuner_id:
        raise ConfigError(f"a worker's id must not contain 'chief' (got {tuner_id!r})")
    tuner_id = "chief" if role == "chief" else tuner_id or f"tuner-{uuid.uuid4().hex[:8]}"
    os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port)
    return tuner_id


def serve_oracle(directory: Path, trials: int = 20, epochs: int = 12, algorithm: str = "random",
                 seed: int = 42) -> kt.Tuner:
    """Chief of a shared search (after `join_search`): serve the oracle until every worker was told to stop.

    Runs no trial and needs no data: the search space does not depend on the feature size. Returns the
    tuner, whose oracle holds every trial of every worker.
    """
    tuner = _make_tuner(1, directory, trials, epochs, algorithm, seed, "chief")
    logger.info("oracle: %s search of %d trials, waiting for workers", algorithm, trials)
    oracle, told_to_stop, failed = tuner.oracle, threading.Event(), []
    create_trial = oracle.create_trial

    def create_trial_noting_the_end(tuner_id):
        trial = create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.STOPPED:
            told_to_stop.set()
        return trial

    def serve():
        try:
            tuner.search()
        except BaseException as error:   # noqa: BLE001 - raised again in the calling thread
            failed.append(error)

    oracle.create_trial = create_trial_noting_the_end   # the oracle's server calls it for every worker
    # Keras Tuner's server checks for the end every 20 s once a worker was told to stop, so the chief outlived its
    # search by up to 20 s; its thread is left to the process's exit, and the end is checked here every 0.2 s.
    server = threading.Thread(target=serve, name="keras-tuner-oracle", daemon=True)
    server.start()
    while not (told_to_stop.is_set() and not oracle.ongoing_trials and not oracle.tuner_ids):
        if not server.is_alive():
            break
        time.sleep(0.2)
    if failed:
        raise failed[0]
    return tuner


def trials_run_here(tuner: kt.Tuner) -> list[str]:
    """Ids of the trials this tuner trained (those with a checkpoint in its own project folder)."""
    return sorted(p.name.removeprefix("trial_") for p in Path(tuner.project_dir).glob("trial_*")
                  if (p / "checkpoint.weights.h5").exists())


def best_head(directory: Path, summary: dict, feature_dim: int) -> keras.Model:
    """The best trial's head with its trained weights, from whichever tuner's folder under `directory` ran it."""
    best = summary["best"][0]
    found = sorted(Path(directory).glob(f"*/trial_{best['trial']}/checkpoint.weights.h5"))
    if not found:
        raise FileNotFoundError(f"no checkpoint of trial {best['trial']} under {directory}; workers on other "
                                f"machines keep theirs in their own tuner folder")
    head = head_from_hp(as_hp(best["hyperparameters"]), feature_dim)
    head.load_weights(found[0])
    return head


def tuner_summary(tuner: kt.Tuner, top: int = 10) -> dict:
    """The best trials as plain data: hyper-parameters and validation AUC, best first."""
    trials = tuner.oracle.get_best_trials(top)
    return {
        "algorithm": type(tuner).__name__, "objective": "val_auc",
        "trials_run": len(tuner.oracle.trials),
        "best": [{"trial": t.trial_id, "val_auc": float(t.score) if t.score is not None else None,
                  "hyperparameters": dict(t.hyperparameters.values)} for t in trials],
    }


def as_hp(values: dict) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    for key, value in values.items():
        hp.Fixed(key, value)
    return hp
