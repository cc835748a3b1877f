"""Batch-norm recalibration of a freshly pruned model.

Removing channels changes what reaches every later BatchNormalization: a
convolution that lost some of its input channels produces maps with another mean
and variance, and the moving statistics learnt on the full network no longer
normalise them. Right after pruning, students of a trained network are often at
chance for this reason alone. Re-estimating the moving statistics on a few hundred
training images, with no weight changed, recovers much of the accuracy before any
fine-tuning: the "adaptive batch normalization" of EagleEye (Li, Wu, Ma, Lin, Chen,
Yang, ECCV 2020).

`recalibrate_batchnorm` runs the model in inference mode (dropout off) except that
every BatchNormalization normalises with the statistics of the batch it sees, as in
training, and records its inputs; each layer's moving mean and variance become the
mean and (biased) variance of its inputs over all the images, accumulated in
mergeable float64 sums (`hos_keras.stats.PowerSums`), not by an exponential moving
average.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from hos_keras import calibration, stats
from hos_keras.errors import InvalidArgumentError

__all__ = ["recalibrate_batchnorm"]


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization of `model`, nested models included."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def recalibrate_batchnorm(
    model: keras.Model, data, steps: int | None = None, *, batch_size: int = 64
) -> dict[str, int]:
    """Re-estimates the moving statistics of every BatchNormalization of `model`.

    Each BatchNormalization's `moving_mean` and `moving_variance` become the mean
    and variance of its inputs over the images of `data`, with every batch norm
    normalising by the batch's statistics and every other layer in inference mode
    (see the module). Weights, including `gamma` and `beta`, do not change. Use it
    on a slim model before evaluating or fine-tuning it (EagleEye's adaptive batch
    normalization; `compress` does by default).

    Args:
        model: A built Keras model (functional, Sequential or subclassed; nested
            models included).
        data: A `tf.data.Dataset` or `keras.utils.PyDataset` of `x` or `(x, y)`
            batches, an `(x, y)` tuple of arrays or an array `x`. A few hundred
            images are enough; batches of at least 32 keep the batch statistics
            close to the population's.
        steps: Batches of `data` to use; `None` for all of them. Defaults to
            `None`.
        batch_size: Batch size of arrays. Defaults to `64`.

    Returns:
        Layer path -> the number of images its statistics were taken on (empty
        when the model has no BatchNormalization).

    Raises:
        InvalidArgumentError: for data of another type, a bad `steps`, or data
            that gave no batch.

    Example:

    ```python
    student = hos_keras.slim_model(model, plan)
    hos_keras.recalibrate_batchnorm(student, train_ds, steps=8)
    student.evaluate(test_ds)
    ```
    """
    layers = batchnorm_layers(model)
    if not layers:
        return {}
    data = calibration.batches(data, steps, batch_size=batch_size)
    sums: dict[int, stats.PowerSums] = {}
    seen: dict[int, int] = {}  # images per layer

    def recording(layer):
        def call(inputs, training=None, mask=None):
            axis = layer.axis if layer.axis >= 0 else layer.axis + len(inputs.shape)
            values = ops.convert_to_numpy(ops.cast(inputs, "float32"))
            part = stats.PowerSums.from_array(
                np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis]), axis=0
            )
            key = id(layer)
            sums[key] = sums[key].merge(part) if key in sums else part
            seen[key] = seen.get(key, 0) + int(values.shape[0])
            reduce = [i for i in range(len(inputs.shape)) if i != axis]
            x = ops.cast(inputs, "float32")
            mean, variance = ops.moments(x, reduce)
            out = ops.batch_normalization(
                x,
                mean,
                variance,
                axis=axis,
                offset=None if layer.beta is None else ops.cast(layer.beta, "float32"),
                scale=None if layer.gamma is None else ops.cast(layer.gamma, "float32"),
                epsilon=layer.epsilon,
            )
            return ops.cast(out, inputs.dtype)

        return call

    images = 0
    try:
        for layer in layers:
            layer.call = recording(layer)
        for batch in data:
            x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            model(x, training=False)
            images += int(keras.tree.flatten(x)[0].shape[0])
    finally:
        for layer in layers:
            del layer.call  # the class's call again
    if not images:
        raise InvalidArgumentError(
            "The recalibration data gave no batch; pass a non-empty dataset (or "
            "more steps)."
        )
    done = {}
    for layer in layers:
        part = sums.get(id(layer))
        if part is None:
            continue  # not on the path of these inputs
        layer.moving_mean.assign(part.mean.astype(layer.moving_mean.dtype))
        variance = part.m2 / part.count
        layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
        done[layer.path] = seen[id(layer)]
    return done
