"""Pneumo: pneumonia detection on chest X-rays — library behind the dashboard and command line.

The public API is importable from here (`from pneumo_core import Diagnoser, read_film`). Names load
their module on first use, so `import pneumo_core` stays fast and TensorFlow-free: the command line's
`--help` and the TensorFlow-free modules (settings, choices, registry, jobs) never pay for Keras.
"""
import importlib
import os

# Quiet TensorFlow's C++ start-up chatter before anything imports it; users can still override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

# Public name -> the module defining it (relative to pneumo_core).
_API = {
    # scoring films
    "Diagnoser": "serve.diagnosis", "Diagnosis": "serve.diagnosis", "certainty": "serve.diagnosis",
    "PneumoModel": "learn.model", "read_film": "imaging.films", "read_image": "imaging.films", "Film": "imaging.films",
    "make_cam": "explain.cam", "overlay": "explain.cam", "OODDetector": "imaging.ood", "report_pdf": "serve.report",
    # training and evaluation
    "train": "learn.training", "tune": "learn.training", "TrainResult": "learn.training", "TrainConfig": "settings",
    "Settings": "settings", "load_settings": "settings", "load_dataset": "learn.data", "check_dataset": "learn.data",
    "FeatureCache": "learn.features", "embed": "learn.features", "evaluate": "evaluation.metrics",
    "classification_report": "evaluation.metrics", "choose_threshold": "evaluation.metrics",
    # registry, vocabulary, progress, errors
    "list_versions": "records.registry", "promote": "records.registry", "resolve": "records.registry",
    "CLASSES": "choices", "label_name": "choices",
    "Progress": "progress", "StreamReporter": "progress", "CallbackReporter": "progress",
    "PneumoError": "errors", "ConfigError": "errors", "ImageError": "errors", "DatasetError": "errors",
    "WeightsError": "errors", "RegistryError": "errors", "JobError": "errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'pneumo_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value   # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
