"""TFLite conversion and interpreter helpers for exported files (the CLI).

Timing lives in `hos_keras.latency`.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import keras
import tensorflow as tf

from hos_keras import _startup

__all__ = ["interpreter", "to_tflite"]


def to_tflite(model: keras.Model) -> bytes:
    """Converts a Keras model to a TFLite flatbuffer (float32, no quantization).

    The model is exported as a SavedModel first (`model.export`), which keeps
    the conversion quiet and works for any functional model.

    Args:
        model: A built Keras model.

    Returns:
        The flatbuffer bytes.
    """
    with tempfile.TemporaryDirectory() as scratch, _startup.hidden_chatter():
        path = os.path.join(scratch, "saved_model")
        model.export(path, format="tf_saved_model", verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(path).convert()


def interpreter(flat: bytes, threads: int | None = None) -> tf.lite.Interpreter:
    """A TFLite interpreter with its tensors allocated."""
    with warnings.catch_warnings(), _startup.hidden_chatter():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        result = tf.lite.Interpreter(model_content=flat, num_threads=threads)
        result.allocate_tensors()
    return result
