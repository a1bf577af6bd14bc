"""The names users pick from, in one TensorFlow-free module.

The command line (whose `--help` must stay fast), the dashboard's forms and the TensorFlow modules
that implement each choice all import these lists; the implementing modules reject any other name,
and tests/test_choices.py checks that each list matches what its module implements.
"""
from __future__ import annotations

BACKBONES = ("mobilenet_v2", "resnet50", "efficientnet_b0")   # backbones.BACKBONES
TUNERS = ("random", "hyperband", "bayesian")                  # tuning: Keras Tuner algorithms
CAM_METHODS = ("gradcam", "gradcam++", "scorecam")             # cam.METHODS
STRATEGIES = ("default", "mirrored", "multiworker")            # distribute.make_strategy (fine-tuning)
NORMALISATIONS = ("equalize", "clahe", "stretch", "none")      # preprocessing.normalise_intensity
SPLITS = ("train", "val", "test")

# Class names by label: 0 = NORMAL, 1 = PNEUMONIA (every label and probability in Pneumo uses this order).
CLASSES = ("NORMAL", "PNEUMONIA")

# The choice lists of TrainConfig's fields, by field name (for forms and the command line).
TRAIN_CHOICES = {"backbone": BACKBONES, "tuner": TUNERS, "normalisation": NORMALISATIONS, "strategy": STRATEGIES}


def label_name(label) -> str:
    """The class name of a label (0 or 1, or a bool: is it pneumonia?).

    Args:
        label: 0 / 1 (int, numpy integer or bool).
    Returns:
        "NORMAL" or "PNEUMONIA".
    """
    return CLASSES[int(bool(label))]
