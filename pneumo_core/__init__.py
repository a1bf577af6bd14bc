"""Pneumo: pneumonia detection on chest X-rays — library behind the dashboard and command line."""
import os

# Quiet TensorFlow's C++ start-up chatter before anything imports it; users can still override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
