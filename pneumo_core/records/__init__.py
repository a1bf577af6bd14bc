"""What must be remembered and trusted: the model registry, the audit chain, users, access rules, the database.

No model and no TensorFlow: records are read by every layer above.
"""
