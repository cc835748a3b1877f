"""Parameter and multiply-accumulate (MAC) counts of a Keras model.

Convention. MACs are the multiply-accumulates of the weight layers for ONE input
sample: convolutions (incl. grouped, transposed, depthwise and separable) and Dense
layers; the bias add is not counted. Nested models and traced subclassed layers are
counted through; a layer hos_keras cannot read (an untraceable subclassed layer or
model) has its parameters counted but not its MACs. keras.ops operations count 0
MACs, except `matmul` and `conv`, counted from their shapes. Normalization,
activations, pooling and merges are counted as 0 MACs (BatchNormalization folds into the preceding convolution at
inference). An unknown dimension (a sequence of any length) counts as 1: the MACs
of a model whose sequence length is unknown are those of one position, and
attention's `QK^T` and `AV` count one key position; give the model fixed-length
inputs to count a length. Parameters count every weight, trainable or not (BatchNormalization's
moving mean and variance included), as `model.count_params()` does. A layer called
several times (shared) has its parameters counted once, at its first call, and its
MACs at every call.

| layer | MACs |
|---|---|
| Conv (kernel k, groups g) | prod(out_spatial) * prod(k) * c_in / g * c_out |
| ConvTranspose | prod(in_spatial) * prod(k) * c_in * c_out |
| DepthwiseConv (multiplier m) | prod(out_spatial) * prod(k) * c_in * m |
| SeparableConv | prod(out_spatial) * (prod(k) * c_in * m + c_in * m * c_out) |
| Dense, EinsumDense | prod(leading input dims except batch) * c_in * units |
| EinsumDense (other equations) | product of the sizes of all its indices but batch |
| attention (T query, S key positions, h heads kept, sizes d_k, d_v) | projections at their positions + T * S * h * (d_k + d_v) |
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from hos_keras import graph, layer_rules

__all__ = ["profile"]


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
        model: A built functional or Sequential model (nested models and traced
            subclassed layers are counted through, their layers named
            `"outer/inner"`).
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
    counted: set[int] = set()
    for call in graph.iter_calls(model):
        op, node, name = call.operation, call.node, call.name
        entry = layers.get(name)
        if entry is None:
            entry = layers[name] = {"type": type(op).__name__, "params": 0, "macs": 0}
        rule = call.rule or layer_rules.LayerRule()
        c_in, c_out = call_channels(rule, op, node, name, in_channels, out_channels)
        params, macs = rule.cost(op, node, c_in, c_out)
        entry["macs"] += int(macs)
        if id(op) not in counted:
            # A shared layer's parameters count once, even under two names (a
            # language model's embedding, called in its backbone and for its
            # logits).
            counted.add(id(op))
            entry["params"] = int(params)
    return {
        "params": int(sum(entry["params"] for entry in layers.values())),
        "macs": int(sum(entry["macs"] for entry in layers.values())),
        "layers": layers,
    }


def call_channels(rule, op, node, name, in_channels, out_channels):
    """Input and output channel counts of one call, overrides applied (shared
    with `hos_keras.cost_model`, which counts the same way)."""
    if not node.input_tensors or not node.output_tensors:
        return 0, 0
    in_shape = node.input_tensors[0].shape
    out_shape = node.output_tensors[0].shape
    first = (
        getattr(op, "data_format", "") == "channels_first"
        and not isinstance(rule, layer_rules.DenseRule)
        and len(in_shape) > 2
    )
    c_in = _known(in_shape[1] if first else in_shape[-1])
    c_out = _known(out_shape[1] if first else out_shape[-1])
    own = rule.widths(op, node)
    if own is not None:
        c_in, c_out = own
    elif isinstance(rule, layer_rules.BatchNormalizationRule):
        c_in = c_out = _known(in_shape[rule.channel_axis(op, len(in_shape))])
    creates = rule.creates(op)
    if not creates and name in out_channels and name not in in_channels:
        # A per-channel layer given only its kept channels.
        c_in = out_channels[name]
    c_in = in_channels.get(name, c_in)
    if not creates:
        c_out = rule.passed(op, c_in)
    return c_in, out_channels.get(name, c_out)


def _known(dim) -> int:
    return 0 if dim is None else int(dim)
