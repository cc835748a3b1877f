"""TFLite conversion and interpreter helpers.

`to_tflite` converts a model for a file (the CLI's export); `timing_flatbuffer`
converts one for timing (`hos_keras.latency` times dozens of one-layer models).
Timing itself lives in `hos_keras.latency`.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import keras
import tensorflow as tf

from hos_keras import _startup

__all__ = ["interpreter", "timing_flatbuffer", "to_tflite"]


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


def timing_flatbuffer(model: keras.Model) -> bytes:
    """Converts a single-input Keras model to a float32 TFLite flatbuffer, fast.

    The inference function is traced at batch 1 and its variables frozen into
    constants before conversion: about five times faster than going through a
    SavedModel (`to_tflite`, used for files) and the same graph,
    which matters when a latency model times dozens of one-layer models.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), model.inputs[0].dtype)
    function = tf.function(lambda x: model(x, training=False))
    with warnings.catch_warnings(), _startup.hidden_chatter():
        frozen = convert_variables_to_constants_v2(function.get_concrete_function(spec))
        warnings.simplefilter("ignore")
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [frozen], trackable_obj=function
        )
        return converter.convert()
