"""TFLite conversion and interpreter helpers shared by `compress` and the CLI.

On small networks TensorFlow's runtime is dominated by per-op overhead, so a
slimmer model barely runs faster there at batch 1; the TFLite interpreter shows the
speed-up that the fewer MACs buy. Both are measured.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

__all__ = ["tflite_latency", "to_tflite"]


def to_tflite(model: keras.Model) -> bytes:
    """Converts a Keras model to a TFLite flatbuffer (float32, no quantization).

    The model is exported as a SavedModel first (`model.export`), which keeps
    the conversion quiet and works for any functional model.

    Args:
        model: A built Keras model.

    Returns:
        The flatbuffer bytes.
    """
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "saved_model")
        model.export(path, format="tf_saved_model", verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(path).convert()


def interpreter(flat: bytes, threads: int | None = None) -> tf.lite.Interpreter:
    """A TFLite interpreter with its tensors allocated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        result = tf.lite.Interpreter(model_content=flat, num_threads=threads)
    result.allocate_tensors()
    return result


def tflite_latency(
    models: Mapping[str, keras.Model],
    sample: np.ndarray,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 2,
) -> dict[str, float]:
    """Median batch-1 inference time of several models in the TFLite interpreter.

    The models take turns, as in `measure_latency`.

    Args:
        models: Name -> single-input model.
        sample: An input batch; its first example is used.
        runs: Timed calls per model. Defaults to `20`.
        warmup: Untimed calls first. Defaults to `3`.
        threads: Interpreter threads. Defaults to `2`.

    Returns:
        Name -> milliseconds per call.
    """
    x = np.asarray(sample)[:1].astype("float32")
    interpreters = {}
    for name, model in models.items():
        runner = interpreter(to_tflite(model), threads)
        index = runner.get_input_details()[0]["index"]
        runner.set_tensor(index, x)
        for _ in range(warmup):
            runner.invoke()
        interpreters[name] = runner
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(int(runs)):
        for name, runner in interpreters.items():
            start = time.perf_counter()
            runner.invoke()
            times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * float(np.median(t)) for name, t in times.items()}
