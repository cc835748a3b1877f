"""Attention layers as channel groups: whole heads are pruned together.

An attention layer's prunable channels are its heads. Head `h` owns slices of
every projection: its columns of the query, key and value kernels (and biases,
and of the gate kernel of gated attention) and its rows of the output projection.
Removing a head removes all of them together and lowers the layer's head count,
which is exact: the other heads compute what they did, and the output projection
sums over the heads that remain (Michel et al., "Are Sixteen Heads Really Better
than One?", NeurIPS 2019; Fang et al., "DepGraph", CVPR 2023).

With grouped-query attention (several query heads share one key/value head), the
unit is a whole key/value group: the key/value head and all of its query heads go
together, so every group keeps the same number of query heads and the layer's
`num_query_heads / num_key_value_heads` ratio holds (Ainslie et al., "GQA",
EMNLP 2023).

For the criteria, unit `u`'s filter is every weight of the unit: its query, key,
value (and gate) kernel columns and biases and its output-projection rows, as one
column of the filter matrix. The data criteria (`taylor`, `fisher`, `dfs`,
`head_importance`, ...) read unit `u` on its heads' own outputs, the slices of
the output projection's input that its rows read (`AttentionRule.channel_maps`).

The attention output (the model's hidden width, the residual stream) and the
inputs are frozen by default. With `hos_keras.plan_pruning(hidden_width=True)`,
a self-attention layer (query, key and value of one width, output of that
width) reads the hidden channels and writes them back: its query, key and value
kernels lose the input rows and its output projection the output columns of a
removed hidden channel, so its input and output channels are pruned together.
The per-head key and value dimensions are not pruned.

`AttentionRule` describes `keras.layers.MultiHeadAttention` (and keras-hub's
`CachedMultiHeadAttention` and Whisper's, whose call without a cache is the
same) and `keras.layers.GroupQueryAttention`; an attention layer of one's own
with EinsumDense projections is one registration away:

```python
hos_keras.register_layer_rule(
    MyAttention,
    hos_keras.attention.AttentionRule(query="q", key="k", value="v", output="o"),
)
```
"""

from __future__ import annotations

import inspect

import keras
import numpy as np

from hos_keras import layer_rules
from hos_keras.errors import InvalidArgumentError

__all__ = ["HIDDEN_WIDTH", "AttentionRule", "attention_units"]

HIDDEN_WIDTH = "the hidden width (attention inputs and outputs) is not pruned"


class AttentionRule(layer_rules.LayerRule):
    """An attention layer whose heads (or key/value groups) are its channels.

    The layer's projections must be `EinsumDense` sublayers held in attributes
    (built when the layer is): the query, key, value (and gate) projections put
    the heads on their output's second-to-last axis, the output projection reads
    them on its input's second-to-last axis.

    Args:
        query: Attribute holding the query projection. Defaults to
            `"_query_dense"`.
        key: Attribute of the key projection. Defaults to `"_key_dense"`.
        value: Attribute of the value projection. Defaults to `"_value_dense"`.
        output: Attribute of the output projection. Defaults to
            `"_output_dense"`.
        gate: Attribute of a gate projection on the query side, if the layer
            has one (absent attributes are skipped). Defaults to `"_gate_dense"`.
        heads: Name of the query head count, an attribute or config key, which
            the rebuilt layer's config gets. Defaults to `"num_heads"`.
        kv_heads: Name of the key/value head count for grouped-query attention;
            `None` when each query head has its own. Defaults to `None`.
        arguments: Names of the call's query, value and key arguments (`None`:
            the key is the value), for the positions each projection reads.
            Defaults to `("query", "value", "key")`.

    Example:

    ```python
    rule = hos_keras.attention.AttentionRule(
        heads="num_query_heads", kv_heads="num_key_value_heads"
    )
    hos_keras.register_layer_rule(keras.layers.GroupQueryAttention, rule)
    ```
    """

    produces = True
    has_filters = True
    output_channels = False

    def __init__(
        self,
        *,
        query: str = "_query_dense",
        key: str = "_key_dense",
        value: str = "_value_dense",
        output: str = "_output_dense",
        gate: str = "_gate_dense",
        heads: str = "num_heads",
        kv_heads: str | None = None,
        arguments: tuple[str, str, str | None] = ("query", "value", "key"),
    ):
        self.query, self.key, self.value = query, key, value
        self.output_name, self.gate = output, gate
        self.heads, self.kv_heads = heads, kv_heads
        self.arguments = tuple(arguments)

    # What the layer is made of ------------------------------------------------

    def _count(self, layer, name: str) -> int:
        value = getattr(layer, name, None)
        if value is None:
            value = getattr(layer, f"_{name}", None)
        if value is None:
            value = layer.get_config()[name]
        return int(value)

    def units(self, layer) -> int:
        """The number of prunable units: key/value heads (GQA) or heads."""
        return self._count(layer, self.kv_heads or self.heads)

    def group_size(self, layer) -> int:
        """Query heads per unit (1 without grouped-query attention)."""
        return self._count(layer, self.heads) // self.units(layer)

    def projections(self, layer) -> list[tuple[str, object]]:
        """`(side, sublayer)` of each projection: side `"query"` for those with
        one slice per query head (query, gate, output), `"kv"` for key and
        value."""
        parts = [
            ("query", self.query),
            ("kv", self.key),
            ("kv", self.value),
            ("query", self.gate),
            ("query", self.output_name),
        ]
        found = []
        for side, attribute in parts:
            sub = getattr(layer, attribute, None)
            if sub is not None:
                found.append((side, sub))
        return found

    def _head_axes(self, layer, sub) -> dict[int, int | None]:
        """`{id(weight): head axis or None}` for one projection's weights."""
        equation = sub.equation.replace("...", "")
        operands, _, out = equation.partition("->")
        inp, _, kernel = operands.partition(",")
        is_output = sub is getattr(layer, self.output_name, None)
        letter = inp[-2] if is_output else out[-2]
        axes = {id(sub.kernel): kernel.index(letter)}
        if getattr(sub, "bias", None) is not None:
            bias_axes = sub.bias_axes or ""
            axes[id(sub.bias)] = (
                bias_axes.index(letter) if letter in bias_axes else None
            )
        return axes

    def roles(self, layer) -> dict[int, tuple[str, int | None]]:
        """`{id(weight): (side, head axis or None)}` for every weight."""
        roles = {}
        for side, sub in self.projections(layer):
            for key, axis in self._head_axes(layer, sub).items():
                roles[key] = (side, axis)
        return roles

    def unsupported(self, layer) -> str:
        """Why the rule cannot prune this layer's heads ("" if it can)."""
        parts = self.projections(layer)
        names = {sub.name for _, sub in parts}
        if len(parts) < 4 or not all(
            isinstance(sub, keras.layers.EinsumDense) for _, sub in parts
        ):
            return "an attention layer without EinsumDense projections"
        try:
            roles = self.roles(layer)
            units, size = self.units(layer), self.group_size(layer)
        except (AttributeError, KeyError, ValueError, TypeError):
            return "an attention layer whose projections hos_keras cannot read"
        if units * size != self._count(layer, self.heads):
            return "an attention layer whose query heads do not split into groups"
        if any(id(w) not in roles for w in layer.weights):
            return (
                "an attention layer with weights besides its projections "
                f"({sorted(names)})"
            )
        return ""

    # Where the data criteria read the units ---------------------------------------

    def channel_source(self, layer):
        """The output projection, whose input holds every head's output.

        The data criteria (`hos_keras.calibration`) record this sublayer's
        input while the model runs; `channel_maps` turns it into maps per unit.
        """
        return getattr(layer, self.output_name)

    def channel_maps(self, layer, heads):
        """Each unit's outputs, as a producer's channels are read.

        Args:
            layer: The attention layer.
            heads: Its output projection's input, `(N, ..., heads, head_size)`:
                every query head's value-weighted sum (times its gate, for
                gated attention), which the projection's rows of that head read.

        Returns:
            `(N, positions, units)`: per unit, the outputs of its query heads
            (one, or a key/value group's), their head channels and query heads
            counted as positions.

        Raises:
            InvalidArgumentError: if the input has no axis of the layer's query
                heads second to last.
        """
        units, size = self.units(layer), self.group_size(layer)
        shape = tuple(heads.shape)
        if len(shape) < 3 or shape[-2] != units * size:
            raise InvalidArgumentError(
                f"Layer {layer.name!r} ({type(layer).__name__}): its output "
                f"projection read a tensor of shape {shape}, expected its "
                f"{units * size} query heads on the second-to-last axis, so the "
                "data criteria cannot read each head's output. Use a weight "
                "criterion (k34, l1, ...) or an AttentionRule whose output= "
                "names the projection that reads the heads."
            )
        n = keras.ops.shape(heads)[0]
        per_head = keras.ops.moveaxis(heads, -2, -1)  # (N, ..., head_size, heads)
        per_unit = keras.ops.reshape(per_head, (n, -1, units, size))
        per_unit = keras.ops.transpose(per_unit, (0, 1, 3, 2))
        return keras.ops.reshape(per_unit, (n, -1, units))

    # The rule -------------------------------------------------------------------

    def trace(self, ctx):
        layer = ctx.layer
        reason = self.unsupported(layer)
        if reason:
            ctx.freeze(reason)
            return
        if len(ctx.node.output_tensors) != 1:
            # The scores (or a cache) have an axis of heads: the heads are
            # listed, frozen.
            reason = "returns attention scores or a cache besides its output"
            ctx.freeze_slots(ctx.create(self.units(layer)), reason)
            ctx.freeze(reason)
            return
        ctx.create(self.units(layer))
        shape = ctx.output_shapes[0]
        if ctx.hidden_width and self._trace_hidden(ctx):
            return
        for slots, _ in ctx.inputs:
            ctx.freeze_slots(slots, HIDDEN_WIDTH)
        ctx.output(ctx.fresh(int(shape[-1] or 0), HIDDEN_WIDTH), len(shape) - 1)

    def _trace_hidden(self, ctx) -> bool:
        """Ties query, key, value and output channels; False if their widths or
        axes differ (the hidden width then freezes here)."""
        tensors = _query_key_value(ctx.layer, ctx.node, self.arguments)
        positions = {id(t): k for k, t in enumerate(ctx.node.input_tensors)}
        if not all(id(t) in positions for t in tensors):
            return False
        entries = [ctx.inputs[positions[id(t)]] for t in tensors]
        rank = len(ctx.output_shapes[0])
        width = int(ctx.output_shapes[0][-1] or 0)
        if any(
            len(slots) != width or axis != len(t.shape) - 1
            for (slots, axis), t in zip(entries, tensors, strict=True)
        ):
            return False
        query = entries[0][0]
        for slots, _ in entries[1:]:
            ctx.tie(query, slots)
        ctx.reads(query)
        ctx.output(query, rank - 1)
        return True

    def _hidden_axes(self, layer) -> dict[int, int]:
        """`{id(weight): axis of the hidden channels}`: the input rows of the
        query, key, value (and gate) kernels, the output columns (and bias) of
        the output projection."""
        axes = {}
        for _, sub in self.projections(layer):
            equation = sub.equation.replace("...", "")
            operands, _, out = equation.partition("->")
            inp, _, kernel = operands.partition(",")
            if sub is getattr(layer, self.output_name):
                axes[id(sub.kernel)] = kernel.index(out[-1])
                bias_axes = sub.bias_axes or ""
                if getattr(sub, "bias", None) is not None and out[-1] in bias_axes:
                    axes[id(sub.bias)] = bias_axes.index(out[-1])
            else:
                axes[id(sub.kernel)] = kernel.index(inp[-1])
        return axes

    def filters(self, layer):
        units = self.units(layer)
        roles = self.roles(layer)
        columns = []
        for weight in layer.weights:
            _, axis = roles[id(weight)]
            if axis is None:
                continue
            values = np.moveaxis(
                np.asarray(keras.ops.convert_to_numpy(weight)), axis, 0
            )
            # Query heads of one unit are consecutive (head h is in unit
            # h // group_size), so the rows of a unit are contiguous.
            columns.append(values.reshape(units, -1))
        return np.concatenate(columns, axis=1).T

    def _kept_heads(self, layer, keep_units) -> dict[str, np.ndarray]:
        size = self.group_size(layer)
        keep_units = np.asarray(keep_units, dtype=np.int64)
        query = (keep_units[:, None] * size + np.arange(size)[None, :]).reshape(-1)
        return {"kv": keep_units, "query": query}

    def slice_weights(self, layer, weights, keep_in, keep_out):
        if keep_in is not None:
            hidden = self._hidden_axes(layer)
            weights = [
                np.take(values, keep_in, hidden[id(variable)])
                if id(variable) in hidden
                else values
                for variable, values in zip(layer.weights, weights, strict=True)
            ]
        if keep_out is None:
            return list(weights)
        kept = self._kept_heads(layer, keep_out)
        roles = self.roles(layer)
        sliced = []
        for variable, values in zip(layer.weights, weights, strict=True):
            side, axis = roles[id(variable)]
            sliced.append(values if axis is None else np.take(values, kept[side], axis))
        return sliced

    def configure(self, config, keep_in, keep_out, channels=None):
        if keep_in is not None and config.get("output_shape") is not None:
            config["output_shape"] = len(keep_in)
        if keep_out is None:
            return config
        units = len(keep_out)
        if self.kv_heads:
            size = int(config[self.heads]) // int(config[self.kv_heads])
            config[self.kv_heads] = units
            config[self.heads] = units * size
        else:
            config[self.heads] = units
        return config

    def widths(self, layer, node):
        query, _, _ = _query_key_value(layer, node, self.arguments)
        return int(query.shape[-1] or 0), self.units(layer)

    def cost(self, layer, node, c_in, c_out):
        """Projections, `QK^T` and `AV` of one call with `c_out` units kept.

        With `T` query positions, `S` key positions attended to, `h` query heads
        kept, `d_k` / `d_v` the key and value head sizes: the projections cost
        their kernel's share of the kept heads at every position they read,
        `QK^T` costs `T * S * h * d_k` and `AV` costs `T * S * h * d_v`. With
        `c_in` below the query width (hidden-width pruning), the weights with a
        hidden axis shrink in proportion.
        """
        units = self.units(layer)
        size = self.group_size(layer)
        heads = {"kv": units, "query": units * size}
        kept = {"kv": c_out, "query": c_out * size}
        roles = self.roles(layer)
        query, key, value = _query_key_value(layer, node, self.arguments)
        width = int(query.shape[-1] or 0)
        hidden = self._hidden_axes(layer) if width and c_in != width else {}

        def share(weight, count):
            return count // width * c_in if id(weight) in hidden else count

        params = 0
        for weight in layer.weights:
            side, axis = roles[id(weight)]
            count = share(weight, int(np.prod(weight.shape)))
            params += count if axis is None else count // heads[side] * kept[side]
        positions = {
            id(getattr(layer, self.query)): query,
            id(getattr(layer, self.key)): key,
            id(getattr(layer, self.value)): value,
            id(getattr(layer, self.gate, None)): query,
            id(getattr(layer, self.output_name)): query,
        }
        macs = 0
        for side, sub in self.projections(layer):
            rows = _positions(positions[id(sub)].shape[1:-1])
            count = share(sub.kernel, int(np.prod(sub.kernel.shape)))
            macs += rows * count // heads[side] * kept[side]
        attended = _positions(_attended(layer, key))
        key_size = _head_size(getattr(layer, self.key), heads["kv"])
        value_size = _head_size(getattr(layer, self.value), heads["kv"])
        rows = _positions(query.shape[1:-1])
        macs += rows * attended * kept["query"] * (key_size + value_size)
        return params, macs


def _positions(dims) -> int:
    return int(np.prod([1 if d is None else int(d) for d in dims], dtype=np.int64))


def _head_size(sub, heads: int) -> int:
    """Per-head output size of a projection (its kernel over input and heads)."""
    operands = sub.equation.replace("...", "").partition("->")[0]
    inp, _, kernel = operands.partition(",")
    inputs = int(sub.kernel.shape[kernel.index(inp[-1])])
    return int(np.prod(sub.kernel.shape)) // inputs // heads


def _attended(layer, key) -> list:
    """The key dimensions each query position attends over."""
    axes = getattr(layer, "_attention_axes", None)
    if axes is None:
        return list(key.shape[1:-1])
    return [key.shape[a] for a in axes]


def _query_key_value(layer, node, names):
    """The query, key and value tensors of one call (key defaults to value)."""
    args, kwargs = node.arguments.args, node.arguments.kwargs
    query_name, value_name, key_name = names
    try:
        named = inspect.signature(layer.call).bind_partial(*args, **kwargs).arguments
        query, value = named[query_name], named[value_name]
        key = named.get(key_name) if key_name else None
    except (TypeError, KeyError):
        tensors = node.input_tensors
        query, value = tensors[0], tensors[1] if len(tensors) > 1 else tensors[0]
        key = tensors[2] if len(tensors) > 2 else None
    return query, value if key is None else key, value


def attention_units(layer) -> tuple[int, int] | None:
    """`(units, query heads per unit)` of an attention layer hos_keras prunes,
    or `None` for any other layer."""
    rule = layer_rules.get_rule(layer)
    if not isinstance(rule, AttentionRule) or rule.unsupported(layer):
        return None
    return rule.units(layer), rule.group_size(layer)


# keras-hub's attention layers whose call without a cache is MultiHeadAttention's.
_HUB_MULTI_HEAD = (
    ("layers.modeling.cached_multi_head_attention", "CachedMultiHeadAttention"),
    (
        "models.whisper.whisper_cached_multi_head_attention",
        "WhisperCachedMultiHeadAttention",
    ),
)


# keras-hub's grouped-query attention layers: (class path under models, prefix of
# the projection attributes, name of the call's hidden-states argument).
_HUB_GROUPED = (
    ("llama.llama_attention.LlamaAttention", "_", "hidden_states"),
    ("mistral.mistral_attention.CachedMistralAttention", "_", "hidden_states"),
    ("qwen.qwen_attention.QwenAttention", "_", "hidden_states"),
    ("gemma.gemma_attention.CachedGemmaAttention", "", "x"),
)


def _register() -> None:
    multi_head = AttentionRule()
    layer_rules.register_layer_rule(keras.layers.MultiHeadAttention, multi_head)
    # keras-hub's, by path: keras-hub need not be installed.
    for module, name in _HUB_MULTI_HEAD:
        path = f"keras_hub.src.{module}.{name}"
        layer_rules.register_layer_rule(path, multi_head)
    # keras-hub's decoder attention layers, with grouped-query attention.
    for path, prefix, argument in _HUB_GROUPED:
        layer_rules.register_layer_rule(
            f"keras_hub.src.models.{path}",
            AttentionRule(
                query=f"{prefix}query_dense",
                key=f"{prefix}key_dense",
                value=f"{prefix}value_dense",
                output=f"{prefix}output_dense",
                heads="num_query_heads",
                kv_heads="num_key_value_heads",
                arguments=(argument, argument, None),
            ),
        )
    grouped = getattr(keras.layers, "GroupQueryAttention", None)
    if grouped is not None:
        layer_rules.register_layer_rule(
            grouped,
            AttentionRule(heads="num_query_heads", kv_heads="num_key_value_heads"),
        )


_register()
