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
channels last. An attention layer's channels are its heads (or key/value groups,
see `hos_keras.attention`): a head's map is its own output, the value-weighted
sum that the output projection reads, its head channels (and, with grouped-query
attention, the query heads of its group) counted as positions. So every
statistic above treats a head as it treats a channel: `taylor_sum` of a head is
|dL/d xi| for a gate xi multiplying the head's output (Michel et al., NeurIPS
2019).

The maps are recorded while the model itself runs: each producer's `call` (an
attention layer's output projection's) is wrapped for the duration of
`collect`, so producers inside nested models and inside other layers
(keras-hub's transformer blocks) are read where they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from hos_keras import graph, layer_rules, stats
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
    producers: Sequence[str] | Mapping[str, keras.layers.Layer],
    data,
    *,
    steps: int | None = None,
    wanted: Iterable[str] = STATISTICS,
    loss=None,
) -> dict[str, ChannelStatistics]:
    """Accumulates the channel statistics of `producers` over calibration data.

    Args:
        model: A built model.
        producers: Names of its top-level layers whose channels are scored, or
            a mapping from names (e.g. the qualified names of
            `hos_keras.channel_groups`) to the layers, nested ones included.
            A layer's channels are read on its output, an attention layer's
            heads on its output projection's input (see the module).
        data: A `tf.data.Dataset` of `(x, y)` batches, or an `(x, y)` tuple of
            arrays (batched by 64).
        steps: Batches to use; `None` for all of them. Defaults to `None`.
        wanted: Which statistics (see `STATISTICS`). Defaults to all.
        loss: The loss of the gradient statistics, called as `loss(y, output)`
            on the model's first output; `None` for sparse categorical
            cross-entropy (`from_logits` unless the model ends with a softmax).
            Defaults to `None`.

    Returns:
        Producer name -> `ChannelStatistics`.

    Raises:
        InvalidArgumentError: for missing data, non-positive steps, a batch
            without labels when gradients are needed, or a producer whose
            channels cannot be read (the message names it and says why).
    """
    wanted = set(wanted)
    if data is None:
        raise InvalidArgumentError(
            "Received data=None; a data-driven criterion needs calibration data: "
            "pass data=(x, y) arrays or a tf.data.Dataset of (x, y) batches."
        )
    data = batches(data, steps, steps_name="calibration_steps")
    if not isinstance(producers, Mapping):
        producers = {name: model.get_layer(name) for name in producers}
    recorder = _MapRecorder(producers)
    names = list(producers)
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
            with recorder.recording() as recorded:
                model(x, training=False)
            maps = recorder.maps(recorded)
            return [maps[n] for n in names], [None] * len(names)
        with tf.GradientTape() as tape:
            with recorder.recording(tape) as recorded:
                output = keras.tree.flatten(model(x, training=False))[0]
            value = tf.reduce_sum(loss(y, output))
        raw = tape.gradient(
            value, recorded, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        maps, grads = recorder.maps(recorded), recorder.maps(raw)
        return [maps[n] for n in names], [grads[n] for n in names]

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
    with recorder.installed():
        for batch in data:
            if replicated:
                per_replica = strategy.run(step, args=(batch,))
                shares = strategy.experimental_local_results(per_replica)
            else:
                shares = [step(batch)]
            for maps, grads in shares:
                for name, m, g in zip(names, maps, grads, strict=True):
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


class _MapRecorder:
    """Records, while a model runs, the tensors where producers' channels are.

    For a producer whose channels are its output (`LayerRule.output_channels`)
    the layer's `call` is wrapped and its output recorded; for a rule that
    says where its channels are instead (`channel_source`, `channel_maps`:
    `hos_keras.attention.AttentionRule`), the source sublayer's first input.
    A recorded tensor is watched by the recording's gradient tape, so the
    loss gradient reaches it even when no weight is trainable. Records are
    kept per thread: the replicas of a `tf.distribute` strategy each record
    their own share.
    """

    def __init__(self, producers: Mapping[str, keras.layers.Layer]):
        self.readers = {}  # name -> (layer, rule) of producers read through a rule
        self.targets: dict[int, tuple[keras.layers.Layer, str, list[str]]] = {}
        for name, layer in producers.items():
            rule = layer_rules.get_rule(layer)
            if rule is not None and rule.output_channels:
                target, side = layer, "output"
            elif hasattr(rule, "channel_source") and hasattr(rule, "channel_maps"):
                target, side = rule.channel_source(layer), "input"
                self.readers[name] = (layer, rule)
            else:
                raise InvalidArgumentError(
                    f"Layer {name!r} ({type(layer).__name__}): its channels are not "
                    "its output's last axis and its layer rule does not say where "
                    "they are (channel_source, channel_maps), so the data "
                    "criteria cannot read them. Use a weight criterion (k34, l1, "
                    "...) or register a rule that defines both."
                )
            entry = self.targets.setdefault(id(target), (target, side, []))
            entry[2].append(name)
        self.names = list(producers)
        self._local = threading.local()

    @contextlib.contextmanager
    def installed(self):
        """Wraps the `call` of every target for the duration of the block."""
        wrapped = []
        try:
            for target, side, names in self.targets.values():
                method = (
                    "quantized_call"
                    if getattr(target, "quantization_mode", None) is not None
                    else "call"
                )
                original = getattr(target, method)
                setattr(target, method, self._wrap(original, side, names))
                wrapped.append((target, method))
            yield
        finally:
            for target, method in wrapped:
                delattr(target, method)

    def _wrap(self, original, side, names):
        def call(*args, **kwargs):
            records = getattr(self._local, "records", None)
            if records is None:
                return original(*args, **kwargs)
            tape = self._local.tape
            if side == "input":
                tensor = tf.convert_to_tensor(args[0] if args else kwargs["inputs"])
                if tape is not None:
                    tape.watch(tensor)
                for name in names:
                    records[name].append(tensor)
                if args:
                    return original(tensor, *args[1:], **kwargs)
                return original(**{**kwargs, "inputs": tensor})
            result = original(*args, **kwargs)
            if tape is not None:
                tape.watch(result)
            for name in names:
                records[name].append(result)
            return result

        return call

    @contextlib.contextmanager
    def recording(self, tape: tf.GradientTape | None = None):
        """Yields `{name: [tensor of each call]}`, filled while the block runs."""
        records = {name: [] for name in self.names}
        self._local.records, self._local.tape = records, tape
        try:
            yield records
        finally:
            self._local.records = self._local.tape = None
        silent = [name for name, found in records.items() if not found]
        if silent:
            name = silent[0]
            where = "output projection" if name in self.readers else "call"
            raise InvalidArgumentError(
                f"Layer {name!r} did not run its {where} when the model ran on "
                "the calibration data, so its channels' feature maps could not be "
                "read (a layer that computes its outputs another way, or one the "
                "model does not call). Use a weight criterion (k34, l1, ...) for "
                f"this model, or leave the layer out of pruning (skip={[name]})."
            )

    def maps(self, records) -> dict[str, tf.Tensor]:
        """Per producer, `(N, positions, channels)`: its calls' maps joined as
        more positions (a layer called twice has its channels in both)."""
        result = {}
        for name, tensors in records.items():
            parts = []
            for tensor in tensors:
                if name in self.readers:
                    layer, rule = self.readers[name]
                    tensor = rule.channel_maps(layer, tensor)
                n, channels = tf.shape(tensor)[0], tensor.shape[-1]
                parts.append(tf.reshape(tensor, (n, -1, channels)))
            result[name] = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
        return result


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
