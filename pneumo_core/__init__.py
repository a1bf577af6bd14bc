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

# Public name -> the module defining it.
_API = {
    # scoring films
    "Diagnoser": "diagnosis", "Diagnosis": "diagnosis", "certainty": "diagnosis",
    "PneumoModel": "model", "read_film": "io", "read_image": "io", "Film": "io",
    "make_cam": "cam", "overlay": "cam", "OODDetector": "ood", "report_page": "report",
    # training and evaluation
    "train": "training", "tune": "training", "TrainResult": "training", "TrainConfig": "settings",
    "Settings": "settings", "load_settings": "settings", "load_dataset": "data", "check_dataset": "data",
    "FeatureCache": "features", "embed": "features", "evaluate": "evaluation",
    "classification_report": "evaluation", "choose_threshold": "evaluation",
    # registry, vocabulary, progress, errors
    "list_versions": "registry", "promote": "registry", "resolve": "registry",
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
