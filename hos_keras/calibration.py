"""Statistics of each producer's output channels on calibration data.

The data-driven criteria (`dfs`, `sfs`, `taylor`, `fisher`, `activation_k34`, ...)
score channels by what their feature maps do on real inputs, not by their weights.
`collect` runs a model over a few batches and accumulates, for every producer of a
prunable channel group and every output channel, sums that merge across batches
(and across devices or workers, by adding them), so that statistics over many
batches equal those of one pass over all the data:

- `std_sum`: the sum over images of each map's spatial standard deviation (the
  spatial diversity of diversity-aware feature selection, DFS);
- `cosine_sum`: the sum over images of the channels' pairwise cosine similarities
  (similarity-aware feature selection, SFS);
- `taylor_sum`: the sum over images of |sum over positions of a * dL/da| (the
  first-order Taylor estimate of the loss change when the map is zeroed;
  Molchanov et al., ICLR 2017);
- `fisher_sum`: the sum over images of (sum over positions of a * dL/da)^2 (Group
  Fisher, Liu et al., ICML 2021);
- `power`: `hos_keras.stats.PowerSums` of every activation value, from which the
  paper's cumulants follow.

The feature map of a channel is the producer's output (a convolution's or Dense
layer's, before any normalization or activation), images on the first axis,
channels last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from hos_keras import graph, stats
from hos_keras.errors import InvalidArgumentError, check_int

__all__ = ["ChannelStatistics", "collect"]

# What each statistic needs: the gradients of the loss, or the maps alone.
_NEEDS_GRADIENTS = {"taylor", "fisher"}
STATISTICS = ("std", "cosine", "taylor", "fisher", "power")


@dataclasses.dataclass
class ChannelStatistics:
    """Mergeable per-channel sums of one producer's outputs (see the module).

    Attributes:
        images: Number of images the sums cover.
        std_sum: `(C,)` or `None` when not collected; likewise the others.
        cosine_sum: `(C, C)`.
        taylor_sum: `(C,)`.
        fisher_sum: `(C,)`.
        power: `stats.PowerSums` of shape `(C,)`.
    """

    images: int = 0
    std_sum: np.ndarray | None = None
    cosine_sum: np.ndarray | None = None
    taylor_sum: np.ndarray | None = None
    fisher_sum: np.ndarray | None = None
    power: stats.PowerSums | None = None

    def merge(self, other: ChannelStatistics) -> ChannelStatistics:
        """The sums over both parts of the data."""

        def add(a, b):
            if a is None:
                return b
            if b is None:
                return a
            return a + b

        return ChannelStatistics(
            images=self.images + other.images,
            std_sum=add(self.std_sum, other.std_sum),
            cosine_sum=add(self.cosine_sum, other.cosine_sum),
            taylor_sum=add(self.taylor_sum, other.taylor_sum),
            fisher_sum=add(self.fisher_sum, other.fisher_sum),
            power=(
                other.power
                if self.power is None
                else self.power
                if other.power is None
                else self.power.merge(other.power)
            ),
        )

    __add__ = merge


def batch_statistics(
    maps: np.ndarray, grads: np.ndarray | None, wanted: Iterable[str]
) -> ChannelStatistics:
    """The sums of one batch of feature maps `(N, ..., C)` (and their gradients)."""
    wanted = set(wanted)
    maps = np.asarray(maps, dtype=np.float64)
    n, channels = maps.shape[0], maps.shape[-1]
    flat = maps.reshape(n, -1, channels)  # images, positions, channels
    result = ChannelStatistics(images=n)
    if "std" in wanted:
        result.std_sum = flat.std(axis=1).sum(axis=0)
    if "cosine" in wanted:
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        unit = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
        result.cosine_sum = np.einsum("npc,npd->cd", unit, unit)
    if wanted & _NEEDS_GRADIENTS:
        products = (flat * np.asarray(grads, np.float64).reshape(flat.shape)).sum(1)
        if "taylor" in wanted:
            result.taylor_sum = np.abs(products).sum(axis=0)
        if "fisher" in wanted:
            result.fisher_sum = (products**2).sum(axis=0)
    if "power" in wanted:
        result.power = stats.PowerSums.from_array(flat.reshape(-1, channels), axis=0)
    return result


def collect(
    model: keras.Model,
    producers: Sequence[str],
    data,
    *,
    steps: int | None = None,
    wanted: Iterable[str] = STATISTICS,
    loss=None,
) -> dict[str, ChannelStatistics]:
    """Accumulates the channel statistics of `producers` over calibration data.

    Args:
        model: A built functional model.
        producers: Names of its layers whose outputs are scored.
        data: A `tf.data.Dataset` of `(x, y)` batches, or an `(x, y)` tuple of
            arrays (batched by 64).
        steps: Batches to use; `None` for all of them. Defaults to `None`.
        wanted: Which statistics (see `STATISTICS`). Defaults to all.
        loss: The loss of the gradient statistics, called as `loss(y, output)`;
            `None` for sparse categorical cross-entropy (`from_logits` unless
            the model ends with a softmax). Defaults to `None`.

    Returns:
        Producer name -> `ChannelStatistics`.

    Raises:
        InvalidArgumentError: for missing data, non-positive steps or a batch
            without labels when gradients are needed.
    """
    wanted = set(wanted)
    if data is None:
        raise InvalidArgumentError(
            "Received data=None; a data-driven criterion needs calibration data: "
            "pass data=(x, y) arrays or a tf.data.Dataset of (x, y) batches."
        )
    data = batches(data, steps, steps_name="calibration_steps")
    outputs = [model.get_layer(name).output for name in producers]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [model.outputs[0], *outputs])
    gradients = bool(wanted & _NEEDS_GRADIENTS)
    if gradients and loss is None:
        loss = _default_loss(model)
    totals: dict[str, ChannelStatistics] = {}

    def step(batch):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
        if gradients and y is None:
            raise InvalidArgumentError(
                "The calibration data has no labels; the taylor and fisher "
                "criteria need (x, y) batches for the loss gradients."
            )
        if not gradients:
            _, *maps = probe(x, training=False)
            return maps, [None] * len(maps)
        with tf.GradientTape() as tape:
            output, *maps = probe(x, training=False)
            value = tf.reduce_sum(loss(y, output))
        return maps, tape.gradient(value, maps)

    # Under a tf.distribute strategy each replica takes its share of every batch;
    # the sums of the replicas' shares are the sums of the batch.
    strategy = tf.distribute.get_strategy()
    replicated = strategy.num_replicas_in_sync > 1
    if replicated:
        if not isinstance(data, tf.data.Dataset):
            raise InvalidArgumentError(
                "Under a tf.distribute strategy the calibration data must be a "
                "tf.data.Dataset (or arrays); convert the PyDataset."
            )
        data = strategy.experimental_distribute_dataset(data)
    for batch in data:
        if replicated:
            per_replica = strategy.run(step, args=(batch,))
            shares = strategy.experimental_local_results(per_replica)
        else:
            shares = [step(batch)]
        for maps, grads in shares:
            for name, m, g in zip(producers, maps, grads, strict=True):
                part = batch_statistics(
                    np.asarray(m), None if g is None else np.asarray(g), wanted
                )
                totals[name] = totals[name].merge(part) if name in totals else part
    if not totals:
        raise InvalidArgumentError(
            "The calibration data gave no batch; pass a non-empty dataset "
            "(or more calibration_steps)."
        )
    return totals


def batches(
    data, steps: int | None = None, *, steps_name: str = "steps", batch_size: int = 64
):
    """`data` as an iterable of batches, the first `steps` of them.

    Args:
        data: A `tf.data.Dataset` or `keras.utils.PyDataset` of batches, an
            `(x, y)` tuple of arrays or an array `x`.
        steps: Batches to keep; `None` for all. Defaults to `None`.
        steps_name: The argument's name in error messages.
        batch_size: Batch size of arrays. Defaults to `64`.

    Returns:
        A `tf.data.Dataset` (a generator for a `PyDataset`).

    Raises:
        InvalidArgumentError: for another type of data or a bad `steps`.
    """
    if steps is not None:
        steps = check_int(steps_name, steps)
    if isinstance(data, keras.utils.PyDataset):
        count = len(data) if steps is None else min(steps, len(data))
        return (data[i] for i in range(count))
    if isinstance(data, (tuple, np.ndarray)) and not isinstance(
        data[0], tf.data.Dataset
    ):
        data = tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    if not isinstance(data, tf.data.Dataset):
        raise InvalidArgumentError(
            f"Received data of type {type(data).__name__}; pass (x, y) arrays or a "
            "tf.data.Dataset of (x, y) batches."
        )
    return data if steps is None else data.take(steps)


def _default_loss(model):

    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=not graph.ends_with_softmax(model), reduction=None
    )


def features(
    model: keras.Model, layer_names: Sequence[str], data, images: int = 64
) -> dict[str, np.ndarray]:
    """The outputs of some layers on the first `images` inputs of `data`.

    Args:
        model: A built functional model.
        layer_names: Its (top-level) layers.
        data: `(x, y)` or `x` arrays, or a `tf.data.Dataset` of batches.
        images: How many inputs. Defaults to `64`.

    Returns:
        Layer name -> float64 array `(n, features)`: each image's output
        flattened, `n = min(images, inputs in data)`.

    Raises:
        InvalidArgumentError: for missing or empty data.
    """
    images = check_int("images", images)
    if data is None:
        raise InvalidArgumentError(
            "Received data=None; this allocation compares the layers' feature maps "
            "on calibration data: pass data=(x, y) arrays or a tf.data.Dataset."
        )
    data = batches(data)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [model.get_layer(n).output for n in layer_names])
    parts: dict[str, list[np.ndarray]] = {n: [] for n in layer_names}
    seen = 0
    for batch in data:
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        outputs = probe(x, training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        take = min(images - seen, int(np.shape(outputs[0])[0]))
        for name, value in zip(layer_names, outputs, strict=True):
            value = np.asarray(value)[:take]
            parts[name].append(value.reshape(take, -1).astype(np.float64))
        seen += take
        if seen >= images:
            break
    if not seen:
        raise InvalidArgumentError("The calibration data gave no batch.")
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def linear_cka(features_by_layer: dict[str, np.ndarray]) -> np.ndarray:
    """Normalised HSIC with linear kernels (linear CKA) between every two layers.

    Kornblith, Norouzi, Lee, Hinton (ICML 2019): with `K = X X^T` centred
    (`H K H`), `nHSIC(X, Y) = tr(K L) / sqrt(tr(K K) tr(L L))`, in [0, 1] and
    invariant to the layers' widths.

    Returns:
        A symmetric `(layers, layers)` array in the order of the mapping.
    """
    grams = []
    for x in features_by_layer.values():
        centred = x - x.mean(axis=0, keepdims=True)
        grams.append(centred @ centred.T)  # = H (X X^T) H
    n = len(grams)
    result = np.eye(n)
    norms = [np.sqrt(np.sum(g * g)) for g in grams]
    for i in range(n):
        for j in range(i + 1, n):
            denominator = norms[i] * norms[j]
            value = np.sum(grams[i] * grams[j]) / denominator if denominator else 0.0
            result[i, j] = result[j, i] = value
    return result
