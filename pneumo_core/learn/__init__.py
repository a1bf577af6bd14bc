"""Learning: the training data, backbones, the feature cache, the model, training, tuning and distribution.

Knows nothing of screens, registries or networks; the version folder format lives in `store`.
"""
