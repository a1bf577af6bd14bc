"""Train a model version end to end: data -> cached features -> tuning -> heads -> evaluation -> registry.

The backbone stays frozen by default: it sees each training image once per augmented view (the
feature cache), the tuner and the final heads train on those vectors, and the saved model is the
backbone with the heads' ensemble and a Platt calibration on top. Optional fine-tuning of the
top backbone layers (`fine_tune_epochs`) trains the assembled model on images afterwards.
"""
from __future__ import annotations

import functools
import gc
import logging
import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pneumo_core import __version__
from pneumo_core.evaluation.metrics import THRESHOLD_CONFIDENCE, THRESHOLD_RULE, choose_threshold, evaluate, fit_platt
from pneumo_core.imaging.films import read_image
from pneumo_core.imaging.ood import OODDetector
from pneumo_core.learn.backbones import resolve_weights
from pneumo_core.learn.data import CLASSES, Dataset, class_weights, load_dataset
from pneumo_core.learn.distribute import (
    fit_replicated,
    gpu_count,
    is_chief,
    make_strategy,
    optimizer,
    training_copy,
    wait_for_every_worker,
)
from pneumo_core.learn.features import FeatureCache, any_batch
from pneumo_core.learn.model import (
    assemble,
    build_classifier,
    build_embedder,
    score_files,
    scoring_model,
    tta_inputs,
)
from pneumo_core.learn.pipeline import image_batches
from pneumo_core.learn.store import new_version_id, save_version, tuner_run_dir
from pneumo_core.learn.tuning import (
    as_hp,
    fit_head,
    head_from_hp,
    serve_oracle,
    trials_run_here,
    tune_head,
    tuner_summary,
)
from pneumo_core.progress import Progress, Reporter
from pneumo_core.settings import Settings, TrainConfig

logger = logging.getLogger(__name__)


def _earlier_objects_frozen(function):
    """Run `function` with the objects that exist when it starts left out of garbage collections.

    Those (TensorFlow's and Keras' modules, mostly) are long-lived, yet every full collection during a
    training walked them again: 1.7 s of CPU in the tiny test training, 0.9 s with them frozen.
    """
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if gc.get_freeze_count():   # frozen by the caller, who unfreezes them (or never does) itself
            return function(*args, **kwargs)
        gc.freeze()
        try:
            return function(*args, **kwargs)
        finally:
            gc.unfreeze()   # back in the oldest generation, collectable as before
    return wrapper


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _ensemble_logit(heads, features: np.ndarray) -> np.ndarray:
    return np.mean([np.asarray(h(features, training=False)).reshape(-1) for h in heads], axis=0)


def train_heads(hyperparameters: list[dict], x_train, y_train, x_val, y_val, class_weight, epochs, seed,
                reporter: Reporter | None = None):
    """Fit one head per hyper-parameter set on the features.

    Args:
        hyperparameters: one dict per head (a tuner trial's values).
        x_train, y_train: (N, D) float32 features and (N,) labels 0/1; x_val, y_val: (M, D) and (M,).
        class_weight: {0: w0, 1: w1}; epochs: the most per head (early stopping on val AUC); seed: of head 0.
        reporter: receives a `training epoch` stage over every head's epochs.
    Returns:
        (list of Keras heads from (B, D) features to (B, 1) logits, one history table with a `member` column).
    """
    heads, histories = [], []
    progress = Progress("training epoch", len(hyperparameters) * epochs, reporter)
    for member, values in enumerate(hyperparameters):
        keras.utils.set_random_seed(seed + member)
        head = head_from_hp(as_hp(values), x_train.shape[1], name=f"head_{member}")
        member_text = f"head {member + 1}/{len(hyperparameters)}"
        tick = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs, text=member_text: progress.update(
            1, f"{text} val_auc={logs['val_auc']:.4f}"))
        history = fit_head(head, x_train, y_train, (x_val, y_val), epochs, class_weight, callbacks=[tick],
                           seed=seed + member)
        progress.update((member + 1) * epochs - progress.done, member_text)   # early stopping skipped the rest
        heads.append(head)
        histories.append(pd.DataFrame(history.history).rename_axis("epoch").reset_index().assign(member=member))
    return heads, pd.concat(histories, ignore_index=True)


def fine_tune(model: keras.Model, train: pd.DataFrame, val: pd.DataFrame, config: TrainConfig,
              class_weight: dict, strategy=None, reporter: Reporter | None = None) -> pd.DataFrame:
    """Unfreeze the top fifth of the backbone (BatchNorm stays frozen) and train on images.

    A copy of the model trains under `strategy` (data-parallel), in mixed precision and with XLA if
    the config asks and there is a GPU; its weights are then copied back, so `model` stays a plain
    float32 model.
    """
    backbone = model.get_layer("backbone")
    backbone.trainable = True
    cut = int(len(backbone.layers) * 0.8)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
    strategy = strategy or tf.distribute.get_strategy()
    gpus = gpu_count()
    mixed, xla = config.mixed_precision and gpus > 0, config.xla and gpus > 0
    if config.mixed_precision and not mixed:
        logger.warning("no GPU found; mixed precision ignored (float16 is emulated, hence slower, on CPUs)")
    if config.xla and not xla:  # bench/fine_tune_step.py: 7 vs 91 img/s on a 2-core CPU
        logger.warning("no GPU found; XLA ignored (it makes fine-tuning an order of magnitude slower on CPUs)")
    with strategy.scope():
        trainee = training_copy(model, mixed)
        trainee.compile(optimizer=optimizer(1e-5, mixed), loss="binary_crossentropy",
                        metrics=[keras.metrics.AUC(name="auc")], jit_compile=xla)
    size, norm = config.image_size, config.normalisation
    train_ds = image_batches(train.path, size, norm, config.augmentation, config.seed, 32,
                             labels=train.label, shuffle=True, repeat=True)
    val_ds = image_batches(val.path, size, norm, None, 0, 32, labels=val.label)
    if strategy.num_replicas_in_sync > 1 or config.strategy == "multiworker":
        # Images come from Python (numpy_function), not files: shard by element; batches stay global.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    steps = int(np.ceil(len(train) / 32))
    progress = Progress("fine-tuning epoch", config.fine_tune_epochs, reporter)
    if config.strategy == "multiworker":
        # Keras 3's `fit` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585).
        history = {"loss": []}
        for _ in range(config.fine_tune_epochs):
            history["loss"].append(fit_replicated(trainee, strategy, train_ds, steps, class_weight))
            progress.update(1, f"loss={history['loss'][-1]:.4f}")
    else:
        tick = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: progress.update(
            1, " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k in ("loss", "val_loss", "val_auc"))))
        history = trainee.fit(train_ds, validation_data=val_ds, epochs=config.fine_tune_epochs,
                              steps_per_epoch=steps, class_weight=class_weight, callbacks=[tick], verbose=0).history
    model.set_weights(trainee.get_weights())
    return pd.DataFrame(history).rename_axis("epoch").reset_index().assign(member="fine-tune")


def fit_ood(model: keras.Model, x_train_plain, x_val, train_set, val_set, config: TrainConfig,
            scorer: keras.Model | None = None, tuned_x_val: np.ndarray | None = None, run=None) -> OODDetector:
    """OOD detector on the training films' plain-view embeddings, flag line on validation.

    The cached features are the frozen backbone's; after fine-tuning the backbone has moved, so
    the films are embedded again with the tuned one, through `scorer` (`model.scoring_model(model)`,
    built here if not given: passing the one that scored the films saves tracing another model).
    `tuned_x_val`: the validation films' embeddings by that scorer, when the caller has them from
    scoring those films (then they are not decoded and scored a second time); `run`: see `model.score_files`.
    """
    if config.fine_tune_epochs > 0:
        scorer = scorer or scoring_model(model)
        x_train_plain = score_files(scorer, train_set.path, config.image_size, config.normalisation, run)[1]
        x_val = tuned_x_val if tuned_x_val is not None else score_files(scorer, val_set.path, config.image_size,
                                                                     config.normalisation, run)[1]
    return OODDetector.fit(x_train_plain, x_val)


@dataclass
class CachedFeatures:
    """A dataset's splits and their backbone features: what `train` and `tune` start from."""
    dataset: Dataset
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    x_train: np.ndarray  # every view of every training film: plain first, then the augmented views
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_weight: dict
    cache: FeatureCache
    weights: str | None
    views: int

    def trial_vectors(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """One vector per training film for tuning trials, from its plain or first augmented view."""
        # Enough to rank configurations at a fraction of the cost; the final heads then see every view.
        n = len(self.train)
        pick = np.arange(n) + n * np.random.default_rng(seed).integers(0, min(2, self.views), n)
        return self.x_train[pick], self.y_train[pick]


def cached_features(config: TrainConfig, settings: Settings, reporter: Reporter | None = None) -> CachedFeatures:
    """Load and split the dataset, then embed every split (and augmented views) via the feature cache.

    Makes `config.feature_passes` caching stages, each reported to `reporter`.
    """
    dataset = load_dataset(config.data_dir, config.val_fraction, config.test_fraction, config.seed,
                           skip_unreadable=True)
    for note in dataset.notes:
        logger.warning(note)
    sizes = dataset.sizes()
    logger.info("data: " + ", ".join(f"{s} {v['NORMAL']} normal / {v['PNEUMONIA']} pneumonia"
                                     for s, v in sizes.items()))
    train_set, val_set, test_set = (dataset.split(s) for s in ("train", "val", "test"))
    weights = resolve_weights(config.backbone, config.weights, settings.weights_dir)
    logger.info("backbone: %s, weights: %s", config.backbone, weights or "none (random init)")
    cache = FeatureCache(settings.cache_dir, config.backbone, weights, config.image_size, config.normalisation,
                         lambda: build_embedder(config.backbone, config.image_size, weights), reporter)

    views = [cache.get(train_set.path, label="train plain view")]
    for v in range(1, config.augmented_views + 1):
        views.append(cache.get(train_set.path, config.augmentation, seed=config.seed + v,
                               label=f"train augmented view {v}/{config.augmented_views}"))
    x_train = np.concatenate(views)
    y_train = np.tile(train_set.label.to_numpy(np.float32), len(views))
    x_val = cache.get(val_set.path, label="validation")
    x_test = cache.get(test_set.path, label="test")
    y_val, y_test = val_set.label.to_numpy(np.float32), test_set.label.to_numpy(np.float32)
    return CachedFeatures(dataset, train_set, val_set, test_set, x_train, y_train, x_val, y_val, x_test, y_test,
                          class_weights(train_set.label), cache, weights, len(views))


@dataclass
class Heads:
    """The classifier on top of the backbone: the tuned heads' ensemble and its Platt calibration."""
    members: list[dict]      # hyper-parameters of each head, best first
    heads: list              # Keras models, (B, D) features -> (B, 1) logits
    platt: tuple[float, float]
    history: pd.DataFrame    # one row per epoch and head (`member`)
    tuner: dict              # tuning.tuner_summary of the search

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probability of PNEUMONIA, (N,), from (N, D) backbone features."""
        return _sigmoid(self.platt[0] * _ensemble_logit(self.heads, features) + self.platt[1])


def fit_heads(features: CachedFeatures, config: TrainConfig, settings: Settings,
              reporter: Reporter | None = None) -> Heads:
    """Tune the head on the cached features, train the `config.ensemble` best and calibrate them on validation."""
    tuner_dir = tuner_run_dir(settings.tuner_dir)
    tuner = tune_head(*features.trial_vectors(config.seed), features.x_val, features.y_val, features.class_weight,
                      tuner_dir, config.trials, config.epochs, config.tuner, config.seed, reporter=reporter)
    summary = tuner_summary(tuner)
    shutil.rmtree(tuner_dir, ignore_errors=True)
    members = [t["hyperparameters"] for t in summary["best"][: config.ensemble]]
    heads, history = train_heads(members, features.x_train, features.y_train, features.x_val, features.y_val,
                                 features.class_weight, config.epochs, config.seed, reporter)
    platt = fit_platt(_ensemble_logit(heads, features.x_val), features.y_val)
    return Heads(members, heads, platt, history, summary)


def fit_tta(model, heads: Heads, features: CachedFeatures, config: TrainConfig, reporter: Reporter | None = None):
    """Refit the Platt scaling on validation scores with test-time augmentation (mean logit over the plain
    film and `config.tta_views` views, as the saved version serves them) and set it into `model`.

    Returns:
        (heads with the new Platt, validation and test probabilities as the version will serve them).
    """
    # PneumoModel.view_logits' views and logits, 32 films a call instead of one (~15 ms of CPU a call, mostly
    # overhead, at the tests' image size), and through the feature cache's embedder, whose pass is traced
    # already and whose backbone `model` shares, then the classifier after its pooling (a ~0.5 s trace less).
    classifier = model.get_layer("classifier")
    pooled_logit = any_batch(keras.Model(classifier.get_layer("pool").output, classifier.output))
    embedding = features.cache.run

    def logits_of(inputs):
        return pooled_logit(embedding(inputs))

    views = 1 + config.tta_views
    scoring = Progress(f"scoring validation and test films in {views} views",
                       len(features.val) + len(features.test), reporter)

    def tta_logit(split):   # mean calibrated logit over the views, decoded 32 films at a time
        paths, out = list(split.path), []
        for i in range(0, len(paths), 32):
            inputs = np.concatenate([tta_inputs(read_image(str(p)), config.image_size, config.normalisation,
                                                config.tta_views, config.seed) for p in paths[i:i + 32]])
            out.append(np.asarray(logits_of(inputs), np.float64).reshape(-1, views).mean(1))
            scoring.update(len(out[-1]))
        return np.concatenate(out)

    z_val, z_test = tta_logit(features.val), tta_logit(features.test)
    # Platt on the current calibrated logit, composed with the current one (both affine): no division.
    a2, b2 = fit_platt(z_val, features.y_val)
    a, b = heads.platt
    platt = (a2 * a, a2 * b + b2)
    model.get_layer("classifier").get_layer("calibration").set_weights(
        [np.array([[platt[0]]], np.float32), np.array([platt[1]], np.float32)])
    return replace(heads, platt=platt), _sigmoid(a2 * z_val + b2), _sigmoid(a2 * z_test + b2)


def model_card(config: TrainConfig, features: CachedFeatures, heads: Heads, threshold: float, ood: OODDetector,
               seconds: float) -> dict:
    """metadata.json of a new version: what it is, what it was trained and calibrated on, and its limits."""
    weights = features.weights
    dataset = features.dataset
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": config.backbone, "weights": Path(weights).name if weights and weights != "imagenet" else weights,
        "image_size": config.image_size, "normalisation": config.normalisation,
        "class_names": list(CLASSES), "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE.format(target=config.min_sensitivity, confidence=THRESHOLD_CONFIDENCE),
        "calibration": {"method": "platt", "a": heads.platt[0], "b": heads.platt[1],
                        "fitted_on": f"val (TTA, {config.tta_views} views)" if config.tta_views else "val"},
        # Scoring with test-time augmentation (PneumoModel): views 0 scores the plain film only.
        "tta": {"views": config.tta_views, "seed": config.seed},
        "ensemble": heads.members,
        "data": {"dir": str(Path(config.data_dir).resolve()), "fingerprint": dataset.fingerprint(),
                 "sizes": dataset.sizes(), "notes": dataset.notes, "split_seed": config.seed,
                 "val_fraction": config.val_fraction, "test_fraction": config.test_fraction,
                 "class_weights": features.class_weight},
        "training": {**{k: v for k, v in asdict(config).items() if k not in ("data_dir",)},
                     "seconds": round(seconds, 1),
                     "feature_cache": {"hits": features.cache.hits, "misses": features.cache.misses}},
        "versions": {"pneumo": __version__, "keras": keras.__version__, "python": platform.python_version(),
                     "tensorflow": tf.__version__},
        "ood": ood.fitted,
        "limitations": "Trained on paediatric (age 1-5) frontal chest X-rays from one centre; "
                       "less reliable on adults, lateral views and other hospitals' equipment.",
    }


@dataclass
class TrainResult:
    """What `train` saved in the model store (not yet registered: see `records.registry.register`)."""
    version_id: str
    path: Path              # the version folder
    metrics: dict           # {"test": evaluation.evaluate(...), "val": ...} at `threshold`
    threshold: float
    seconds: float


@_earlier_objects_frozen
def train(config: TrainConfig, settings: Settings, reporter: Reporter | None = None) -> TrainResult | None:
    """Train and evaluate a new model version and save it in the model store.

    Args:
        config: what to train on and how (TrainConfig's fields are the command line's options).
        settings: where the models, feature cache and tuner runs live.
        reporter: receives the caching, tuning, training, fine-tuning and evaluating stages.
    Returns:
        The saved version, or None on a worker of a multi-worker cluster that is not the chief.
    """
    strategy = make_strategy(config.strategy)  # first: MultiWorkerMirroredStrategy must precede other TF ops
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    features = cached_features(config, settings, reporter)
    heads = fit_heads(features, config, settings, reporter)
    backbone = features.cache.embedder.get_layer("backbone")
    model = assemble(config.backbone, backbone, build_classifier(backbone.output_shape[1:], heads.heads, heads.platt))
    history = heads.history
    if config.fine_tune_epochs > 0:
        history = pd.concat([history, fine_tune(model, features.train, features.val, config, features.class_weight,
                                                strategy, reporter)])
    if not is_chief(strategy):  # the chief scores, evaluates and registers; the others only lent their replicas
        logger.info("done; waiting for the chief to register the model")
        wait_for_every_worker(strategy)
        return None
    scorer = tuned_x_val = run = None
    if config.fine_tune_epochs > 0:   # the backbone moved: score the films, not the cached features
        scorer = scoring_model(model)   # kept for the OOD embeddings: one model traced, not two
        run = any_batch(scorer)   # and traced once, whatever the sizes of the splits' last batches
        (p_val, tuned_x_val), (p_test, _) = (score_files(scorer, s.path, config.image_size, config.normalisation, run)
                                             for s in (features.val, features.test))
    else:
        p_val, p_test = heads.probabilities(features.x_val), heads.probabilities(features.x_test)

    if config.tta_views:
        heads, p_val, p_test = fit_tta(model, heads, features, config, reporter)
    threshold = choose_threshold(features.y_val, p_val, config.min_sensitivity, THRESHOLD_CONFIDENCE)
    # The embeddings do not depend on the calibration fit_tta may have changed since the films were scored.
    ood = fit_ood(model, features.x_train[:len(features.train)], features.x_val, features.train, features.val, config,
                  scorer, tuned_x_val, run)
    evaluating = Progress("evaluating", 1, reporter)
    metrics = {"test": evaluate(features.y_test, p_test, threshold, seed=config.seed),
               "val": evaluate(features.y_val, p_val, threshold, seed=config.seed)}
    evaluating.update()
    predictions = pd.concat([
        pd.DataFrame({"path": s.path, "label": s.label, "probability": p, "split": name})
        for name, s, p in (("val", features.val, p_val), ("test", features.test, p_test))], ignore_index=True)
    version_id = new_version_id(config.backbone)
    metadata = model_card(config, features, heads, threshold, ood, time.perf_counter() - start)
    path = save_version(settings.models_dir, version_id, model, metadata, metrics, predictions, history, heads.tuner,
                        ood=ood)
    wait_for_every_worker(strategy)  # releases the other workers of a cluster (a no-op otherwise)
    return TrainResult(version_id, path, metrics, threshold, time.perf_counter() - start)


@_earlier_objects_frozen
def tune(config: TrainConfig, settings: Settings, directory: Path, tuner_id: str | None = None,
         reporter: Reporter | None = None) -> dict:
    """Search head hyper-parameters on the cached features: alone, or as the chief or a worker of a shared search.

    Args:
        config, settings: as for `train`; directory: the search folder (each tuner its own subfolder).
        tuner_id: from `tuning.join_search`: None alone, 'chief' to serve the oracle, else a worker's id.
        reporter: receives the caching and tuning stages.
    Returns:
        The best trials (alone, chief: tuning.tuner_summary plus `directory`) or, on a worker, the ids of
        the trials it ran.
    """
    if tuner_id == "chief":
        return {**tuner_summary(serve_oracle(directory, config.trials, config.epochs, config.tuner, config.seed)),
                "directory": str(directory)}
    keras.utils.set_random_seed(config.seed)
    features = cached_features(config, settings, reporter)
    tuner = tune_head(*features.trial_vectors(config.seed), features.x_val, features.y_val, features.class_weight,
                      directory, config.trials, config.epochs, config.tuner, config.seed, tuner_id, reporter)
    if tuner_id:
        return {"tuner_id": tuner_id, "trials_run_here": trials_run_here(tuner), "directory": str(directory)}
    return {**tuner_summary(tuner), "directory": str(directory)}
