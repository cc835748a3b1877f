"""Graph analysis: which output channels of a Keras model can be pruned.

This module reads the structure of a functional (or Sequential) Keras 3 model; it
does no math and never changes the model. It answers, for every layer that produces
output channels, whether removing some of them leaves a model that can be rebuilt
exactly: the removed channels must reach only layers that either act on each channel
separately (followers: BatchNormalization, activations, pooling, padding, dropout,
DepthwiseConv) or read channels as input features (consumers: convolutions and Dense,
which then lose the matching input rows).

Anything that mixes channels in another way - Add, Multiply, Concatenate, Flatten,
Reshape, LayerNormalization over channels, softmax, a Lambda or custom layer, a
nested model, or the model's output itself - freezes the producer, with the reason
recorded. Channel groups coupled through Add/Concatenate and friends are the next
step (`channel_groups`, built on the same traversal).

Keras exposes the functional graph through `Functional._nodes_by_depth` and the
nodes' `input_tensors` / `output_tensors`; this module is the one place that reads
them.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import keras

from hos_keras import kernels
from hos_keras.errors import UnsupportedModelError

__all__ = ["PrunableLayer", "find_prunable_layers", "functional_nodes"]


@dataclasses.dataclass(frozen=True)
class PrunableLayer:
    """A layer whose output channels can be pruned on their own.

    Attributes:
        name: Name of the producing layer (its filters are scored).
        channels: Number of output channels.
        followers: Layers whose per-channel weights are sliced with the producer's
            channels (BatchNormalization, DepthwiseConv, ...), in graph order.
        consumers: Layers that lose the matching input channels (Conv, Dense,
            SeparableConv).
        multipliers: For followers and consumers behind a DepthwiseConv with
            `depth_multiplier` m > 1: the product of those multipliers. Their
            input channel `c * m + j` then comes from the producer's channel `c`.
            Layers not listed have multiplier 1.
    """

    name: str
    channels: int
    followers: tuple[str, ...]
    consumers: tuple[str, ...]
    multipliers: dict[str, int] = dataclasses.field(default_factory=dict)


def functional_nodes(model: keras.Model) -> list:
    """The nodes of a functional or Sequential model, inputs first.

    Raises:
        UnsupportedModelError: for a subclassed or unbuilt model.
    """
    graph = _functional(model)
    depths = sorted(graph._nodes_by_depth, reverse=True)
    return [node for depth in depths for node in graph._nodes_by_depth[depth]]


def _functional(model):
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"Expected a keras.Model; received {type(model).__name__}."
        )
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise UnsupportedModelError(
                f"Sequential model {model.name!r} is not built with a known input "
                "shape. Start it with keras.Input(shape=...) or call "
                "model.build(input_shape) first."
            )
        return graph
    if not hasattr(model, "_nodes_by_depth"):
        raise UnsupportedModelError(
            f"Model {model.name!r} is a subclassed model ({type(model).__name__}); "
            "hos_keras needs a functional or Sequential model whose layer graph it "
            "can read. Rebuild it functionally: inputs = keras.Input(shape); "
            "outputs = ...layers...(inputs); keras.Model(inputs, outputs)."
        )
    return model


_ELEMENTWISE = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)
_SPATIAL = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
)
_COUPLING_ACTIVATIONS = ("softmax", "log_softmax")
_CONSUMERS = (
    kernels.CONV_TYPES
    + kernels.CONV_TRANSPOSE_TYPES
    + kernels.SEPARABLE_TYPES
    + (keras.layers.Dense,)
)
_DEPTHWISE = kernels.DEPTHWISE_TYPES


def _channel_axis(layer, rank: int) -> int:
    """Positive index of the channel axis a layer works on, for an input rank."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.axis % rank
    fmt = getattr(layer, "data_format", "channels_last")
    return 1 if fmt == "channels_first" else rank - 1


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def _output_axis(layer, rank: int) -> int:
    """Positive channel axis of a producer's output of the given rank."""
    if isinstance(layer, keras.layers.Dense):
        return rank - 1
    return _channel_axis(layer, rank)


def _classify(layer, axis: int, rank: int) -> tuple[str, str]:
    """How `layer` treats the channels on `axis` of its input: kind and reason.

    Kinds: "follower" (acts per channel; channels pass through), "consumer" (reads
    them as input features), or "frozen" (anything else; the reason says why).
    """
    kind = type(layer).__name__
    if isinstance(layer, keras.Model):
        return "frozen", f"reach nested model {layer.name!r}"
    if isinstance(layer, _CONSUMERS):
        if getattr(layer, "groups", 1) != 1:
            return "frozen", f"reach grouped convolution {layer.name!r}"
        expected = rank - 1 if isinstance(layer, keras.layers.Dense) else None
        if expected is None:
            expected = _channel_axis(layer, rank)
        if expected != axis:
            return "frozen", f"reach {layer.name!r} ({kind}) on another axis"
        return "consumer", ""
    if isinstance(layer, _DEPTHWISE + _SPATIAL):
        if _channel_axis(layer, rank) != axis:
            return "frozen", f"reach {layer.name!r} ({kind}) on another axis"
        return "follower", ""
    if isinstance(layer, keras.layers.BatchNormalization):
        if _channel_axis(layer, rank) != axis:
            return "frozen", f"reach {layer.name!r} normalizing another axis"
        return "follower", ""
    if isinstance(layer, _ELEMENTWISE):
        return "follower", ""
    if isinstance(layer, keras.layers.Activation):
        if _activation_name(layer) in _COUPLING_ACTIVATIONS:
            return "frozen", f"reach {layer.name!r}, a softmax over channels"
        return "follower", ""
    if isinstance(layer, keras.layers.PReLU):
        # alpha holds the channels on its last axis (or shares one value).
        if axis != rank - 1:
            return "frozen", f"reach PReLU {layer.name!r} on another axis"
        return "follower", ""
    reason = (
        f"reach {layer.name!r} ({kind}), which couples, reshapes or is unknown to "
        "the channel analysis"
    )
    return "frozen", reason


def find_prunable_layers(
    model: keras.Model,
) -> tuple[list[PrunableLayer], dict[str, str]]:
    """Finds the layers whose output channels can be pruned independently.

    A producer (Conv, ConvTranspose, SeparableConv or Dense, used once, ungrouped)
    is prunable when every path from its output reaches only followers and then
    consumers (see the module docstring) and never the model's outputs.

    Args:
        model: A built functional or Sequential Keras model.

    Returns:
        `(prunable, frozen)`: the prunable layers in graph order, and a dict from
        the name of every other layer with output-channel filters to the reason it
        is not prunable.

    Raises:
        UnsupportedModelError: for a subclassed or unbuilt model.
    """
    nodes = functional_nodes(model)
    graph = _functional(model)
    consumers_of = defaultdict(list)
    uses = defaultdict(int)
    for node in nodes:
        uses[id(node.operation)] += 1
        for tensor in node.input_tensors:
            consumers_of[id(tensor)].append(node)
    output_ids = {id(t) for t in graph.outputs}

    prunable: list[PrunableLayer] = []
    frozen: dict[str, str] = {}
    seen: set[int] = set()
    for node in nodes:
        layer = node.operation
        if isinstance(layer, keras.Model) or id(layer) in seen:
            if isinstance(layer, keras.Model):
                frozen[layer.name] = "nested model (not analysed yet)"
            continue
        seen.add(id(layer))
        if not kernels.has_filters(layer):
            continue
        if isinstance(layer, _DEPTHWISE):
            frozen[layer.name] = "depthwise: its channels follow its input's"
            continue
        if uses[id(layer)] > 1:
            frozen[layer.name] = "shared layer used more than once"
            continue
        if getattr(layer, "groups", 1) != 1:
            frozen[layer.name] = "grouped convolution"
            continue
        if _activation_name(layer) in _COUPLING_ACTIVATIONS:
            frozen[layer.name] = "its activation is a softmax over channels"
            continue
        output = node.output_tensors[0]
        rank = len(output.shape)
        reason, followers, consumers, multipliers = _walk(
            output, _output_axis(layer, rank), consumers_of, uses, output_ids
        )
        if reason:
            frozen[layer.name] = reason
            continue
        if not consumers:
            frozen[layer.name] = "its channels reach no layer that reads them"
            continue
        channels = int(output.shape[_output_axis(layer, rank)])
        prunable.append(
            PrunableLayer(
                layer.name, channels, tuple(followers), tuple(consumers), multipliers
            )
        )
    return prunable, frozen


def _walk(tensor, axis, consumers_of, uses, output_ids):
    """Follows channels from `tensor`.

    Returns (reason, followers, consumers, multipliers); the reason is empty when
    the channels can be pruned.
    """
    followers: list[str] = []
    consumers: list[str] = []
    multipliers: dict[str, int] = {}
    stack = [(tensor, axis, 1)]
    while stack:
        current, current_axis, multiplier = stack.pop()
        if id(current) in output_ids:
            return "its channels reach a model output", followers, consumers, {}
        for node in consumers_of[id(current)]:
            layer = node.operation
            rank = len(current.shape)
            kind, reason = _classify(layer, current_axis, rank)
            if kind == "frozen":
                return f"its channels {reason}", followers, consumers, {}
            if uses[id(layer)] > 1:
                reason = f"its channels reach shared layer {layer.name!r}"
                return reason, followers, consumers, {}
            if multiplier > 1:
                multipliers[layer.name] = multiplier
            if kind == "consumer":
                consumers.append(layer.name)
                continue
            followers.append(layer.name)
            out = node.output_tensors[0]
            out_rank = len(out.shape)
            # Global pooling drops the spatial axes: the channel axis moves to the
            # end (channels_last) or stays at 1 (channels_first).
            out_axis = (
                current_axis
                if out_rank == rank
                else (1 if current_axis == 1 else out_rank - 1)
            )
            out_multiplier = multiplier * getattr(layer, "depth_multiplier", 1)
            stack.append((out, out_axis, out_multiplier))
    return "", followers, consumers, multipliers
