"""Checks of the data a model is trained or evaluated on.

Keras casts inputs to the model's dtype without a word, so raw uint8 images given
to a model trained on standardized floats run - and give chance accuracy. Every
hos_keras entry point that trains or evaluates (`compress`, `HOSDistiller.fit`,
`HOSPruneCallback`'s calibration data, the tuner's trials) checks the data against
the model's inputs first, and says what to change.
"""

from __future__ import annotations

import functools
import logging

import keras
import numpy as np
import tensorflow as tf

from hos_keras.errors import InvalidArgumentError

__all__ = ["check_inputs", "many_models"]


def _first_x(data):
    """The inputs of `data`'s first batch, as `(shape, dtype)` pairs, and
    whether `data` is batched by the caller (arrays are batched by fit)."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        x = spec[0] if isinstance(spec, tuple) else spec
        specs = keras.tree.flatten(x)
        return [(tuple(s.shape), _dtype(s)) for s in specs], True
    if isinstance(data, keras.utils.PyDataset):
        data = data[0]
    if isinstance(data, (tuple, list)) and data and not isinstance(data, np.ndarray):
        x = data[0]
    else:
        x = data
    arrays = keras.tree.flatten(x)
    if not all(hasattr(a, "shape") and hasattr(a, "dtype") for a in arrays):
        raise TypeError("not arrays")  # e.g. a distributed dataset: Keras judges
    return [(tuple(a.shape), _dtype(a)) for a in arrays], False


def _dtype(array) -> str:
    dtype = getattr(array, "dtype", None)
    if dtype is None:
        dtype = np.asarray(array).dtype
    return keras.backend.standardize_dtype(dtype)


def _kind(dtype: str) -> str:
    """`"f"`, `"i"`, `"u"` or `"b"` (bfloat16 is floating point)."""
    return "f" if dtype == "bfloat16" else np.dtype(dtype).kind


def check_inputs(model: keras.Model, data, name: str = "data") -> None:
    """Raises if `data` cannot be what `model` was built for.

    Compares the first batch's inputs with the model's: their number, rank,
    every defined dimension, and the kind of dtype (floating point or integer).

    Args:
        model: A built model.
        data: `(x, y)` or `x` arrays, a `tf.data.Dataset` of batches or a
            `keras.utils.PyDataset`; other kinds are left to Keras.
        name: The argument's name in the message.

    Raises:
        InvalidArgumentError: naming `name`, what the model expects, what the
            data holds, and the fix.
    """
    if data is None or not getattr(model, "inputs", None):
        return
    try:
        given, batched = _first_x(data)
    except (TypeError, IndexError, AttributeError, ValueError):
        return  # a kind of data Keras itself will judge
    expected = [
        (tuple(t.shape), keras.backend.standardize_dtype(t.dtype)) for t in model.inputs
    ]
    if len(given) != len(expected):
        raise InvalidArgumentError(
            f"Model {model.name!r} takes {len(expected)} input(s) but {name} holds "
            f"{len(given)}; pass one array (or tensor) per model input."
        )
    for (shape, dtype), (want, want_dtype) in zip(given, expected, strict=True):
        example, wanted = shape[1:], want[1:]
        per = "per batch" if batched else "per example"
        if len(example) != len(wanted) or any(
            w is not None and e is not None and e != w
            for e, w in zip(example, wanted, strict=False)
        ):
            fix = "reshape it to the model's input"
            if (
                batched
                and len(shape) == len(wanted)
                and all(w is None or s == w for s, w in zip(shape, wanted, strict=True))
            ):
                fix = "batch the dataset (.batch(n))"
            elif len(example) + 1 == len(wanted) and wanted[-1] == 1:
                fix = "add the channel axis (x[..., None])"
            raise InvalidArgumentError(
                f"Model {model.name!r} expects inputs of shape {want} (batch first) "
                f"but {name} has shape {shape} {per}: {fix}."
            )
        if _kind(want_dtype) == "f" and _kind(dtype) in "iub":
            raise InvalidArgumentError(
                f"Model {model.name!r} takes {want_dtype} inputs but {name} holds "
                f"{dtype}: Keras would cast the raw values silently. Scale them as "
                "the model was trained (e.g. x.astype('float32') / 255, or "
                "hos_keras.data.fashion_mnist_arrays(standardize=True))."
            )
        if _kind(want_dtype) in "iu" and _kind(dtype) == "f":
            raise InvalidArgumentError(
                f"Model {model.name!r} takes {want_dtype} inputs (e.g. token ids) "
                f"but {name} holds {dtype}; pass integers."
            )


class _NoRetracingNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def many_models(function):
    """Decorates a pipeline that trains and evaluates several models.

    Keras traces one function per model it fits or evaluates, all from the same
    Python code, and TensorFlow counts traces by code, not by function: a
    pipeline that evaluates the original, the pruned and the recalibrated model
    and then trains a distiller on a few batches each (`--steps` runs) reads to
    it as one function retraced at every call, and it warns "triggered
    tf.function retracing". Inside `function` that notice is dropped; every
    other TensorFlow message passes.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        logger = tf.get_logger()
        notice = _NoRetracingNotice()
        logger.addFilter(notice)
        try:
            return function(*args, **kwargs)
        finally:
            logger.removeFilter(notice)

    return wrapper
