"""Parameter and multiply-accumulate (MAC) counts of a Keras model.

Convention. MACs are the multiply-accumulates of the weight layers for ONE input
sample: convolutions (incl. grouped, transposed, depthwise and separable) and Dense
layers; the bias add is not counted. A subclassed model used as a layer has its
parameters counted but not its MACs (its graph cannot be read). Normalization, activations, pooling and merges
are counted as 0 MACs (BatchNormalization folds into the preceding convolution at
inference). Parameters count every weight, trainable or not (BatchNormalization's
moving mean and variance included), as `model.count_params()` does. A layer called
several times (shared) has its parameters counted once and its MACs at every call.

| layer | MACs |
|---|---|
| Conv (kernel k, groups g) | prod(out_spatial) * prod(k) * c_in / g * c_out |
| ConvTranspose | prod(in_spatial) * prod(k) * c_in * c_out |
| DepthwiseConv (multiplier m) | prod(out_spatial) * prod(k) * c_in * m |
| SeparableConv | prod(out_spatial) * (prod(k) * c_in * m + c_in * m * c_out) |
| Dense | prod(leading input dims except batch) * c_in * units |
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from hos_keras import graph, kernels
from hos_keras.errors import UnsupportedModelError

__all__ = ["profile"]

_CONV = kernels.CONV_TYPES
_CONV_T = kernels.CONV_TRANSPOSE_TYPES
_SEPARABLE = kernels.SEPARABLE_TYPES
_DEPTHWISE = kernels.DEPTHWISE_TYPES


def _spatial(shape, channels_first: bool) -> int:
    dims = shape[2:] if channels_first else shape[1:-1]
    return int(np.prod([int(d) for d in dims], dtype=np.int64)) if dims else 1


def _channels(shape, channels_first: bool) -> int:
    return int(shape[1] if channels_first else shape[-1])


def _layer_cost(layer, in_shape, out_shape, c_in, c_out):
    """(params, macs) of one call of a weight layer with the given channel counts."""
    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    bias = 1 if getattr(layer, "use_bias", False) else 0
    if isinstance(layer, keras.layers.Dense):
        rows = int(np.prod([int(d) for d in in_shape[1:-1]], dtype=np.int64))
        return c_in * c_out + bias * c_out, rows * c_in * c_out
    k = int(np.prod(layer.kernel_size))
    if isinstance(layer, _DEPTHWISE):
        m = layer.depth_multiplier
        return k * c_in * m + bias * c_in * m, _spatial(out_shape, first) * k * c_in * m
    if isinstance(layer, _SEPARABLE):
        m = layer.depth_multiplier
        params = k * c_in * m + c_in * m * c_out + bias * c_out
        macs = _spatial(out_shape, first) * (k * c_in * m + c_in * m * c_out)
        return params, macs
    if isinstance(layer, _CONV_T):
        return k * c_in * c_out + bias * c_out, _spatial(in_shape, first) * (
            k * c_in * c_out
        )
    groups = getattr(layer, "groups", 1)
    params = k * (c_in // groups) * c_out + bias * c_out
    return params, _spatial(out_shape, first) * k * (c_in // groups) * c_out


_WEIGHT_LAYERS = kernels.FILTER_LAYER_TYPES


def profile(
    model: keras.Model,
    in_channels: Mapping[str, int] | None = None,
    out_channels: Mapping[str, int] | None = None,
) -> dict:
    """Counts the parameters and MACs of a model, in total and per layer.

    See the module docstring for the exact convention. Optional channel overrides
    give the cost of the same model with fewer channels in some layers, which is how
    pruning plans report their effect before any model is rebuilt.

    Args:
        model: A built functional or Sequential model (nested models are counted
            through, their layers named `"outer/inner"`).
        in_channels: Optional mapping from layer name to the number of input
            channels that layer would have. Defaults to `None`.
        out_channels: Optional mapping from layer name to its number of output
            channels (for BatchNormalization and other per-channel layers, the
            channels they keep). Defaults to `None`.

    Returns:
        `{"params": int, "macs": int, "layers": {name: {"type": str,
        "params": int, "macs": int}}}`.

    Raises:
        UnsupportedModelError: for a subclassed or unbuilt model.

    Example:

    ```python
    >>> cost = hos_keras.profile(hos_keras.models.resnet56())
    >>> cost["macs"], cost["params"]
    ```
    """
    in_channels = dict(in_channels or {})
    out_channels = dict(out_channels or {})
    layers: dict[str, dict] = {}
    _profile_into(model, "", in_channels, out_channels, layers)
    return {
        "params": int(sum(entry["params"] for entry in layers.values())),
        "macs": int(sum(entry["macs"] for entry in layers.values())),
        "layers": layers,
    }


def _profile_into(model, prefix, in_channels, out_channels, layers):
    for node in graph.functional_nodes(model):
        layer = node.operation
        name = prefix + layer.name
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            if name not in layers:
                layers[name] = {"type": type(layer).__name__, "params": 0, "macs": 0}
                try:
                    _profile_into(layer, name + "/", in_channels, out_channels, layers)
                except UnsupportedModelError:
                    # A subclassed model inside: its graph cannot be read, so its
                    # parameters are counted and its MACs are not.
                    layers[name]["params"] = int(layer.count_params())
            continue
        entry = layers.get(name)
        first_call = entry is None
        if first_call:
            entry = layers[name] = {
                "type": type(layer).__name__,
                "params": 0,
                "macs": 0,
            }
        if isinstance(layer, _WEIGHT_LAYERS):
            in_shape = node.input_tensors[0].shape
            out_shape = node.output_tensors[0].shape
            first = getattr(layer, "data_format", "") == "channels_first"
            if isinstance(layer, keras.layers.Dense):
                first = False
            c_in = in_channels.get(name, _channels(in_shape, first))
            default_out = _channels(out_shape, first)
            if isinstance(layer, _DEPTHWISE):
                default_out = c_in * layer.depth_multiplier
            c_out = out_channels.get(name, default_out)
            params, macs = _layer_cost(layer, in_shape, out_shape, c_in, c_out)
            entry["macs"] += int(macs)
            if first_call:
                entry["params"] = int(params)
        elif first_call:
            entry["params"] = _scaled_params(layer, out_channels.get(name))


def _scaled_params(layer, channels: int | None) -> int:
    """Parameters of a non-weight layer; per-channel ones scale with `channels`.

    A layer whose every weight has the channel axis last (BatchNormalization,
    PReLU with shared spatial axes, ...) keeps `channels / width` of each weight.
    """
    total = int(layer.count_params()) if layer.built else 0
    if channels is None or total == 0:
        return total
    widths = {int(w.shape[-1]) for w in layer.weights}
    if len(widths) != 1:
        return total
    (width,) = widths
    return int(sum(int(np.prod(w.shape)) // width * channels for w in layer.weights))
