"""The table of layer rules: the one place that knows what a layer type does.

Every other module asks this table about a layer (or a keras.ops operation in a
functional graph) instead of testing its type:

- the channel analysis (`hos_keras.channel_groups`) asks how channels flow through
  it (`LayerRule.trace`): created, passed, repeated, tied, concatenated, reshaped,
  or frozen with a reason;
- the criteria get a producer's filters from `LayerRule.filters`, a
  `(weights_per_filter, n_filters)` matrix whose column `f` holds every weight that
  makes output channel `f`;
- surgery slices the weights (`LayerRule.slice_weights`) and edits the config
  (`LayerRule.configure`) of the layers a plan touches;
- `hos_keras.profile` counts parameters and MACs with `LayerRule.cost`.

This follows Torch-Pruning's one pruning-function object per layer type and its
`register_customized_layer` (Fang et al., "DepGraph: Towards Any Structural
Pruning", CVPR 2023). A user teaches hos_keras their own layer with one line:

```python
hos_keras.register_layer_rule(MyScale, hos_keras.layer_rules.PerChannel("scale"))
```

A rule is found by the layer's exact class first, then by its base classes as long
as the subclass does not override `call` (a subclass that computes something else
must not inherit a rule silently). A layer or operation without a rule freezes every
channel that reaches it: it is never pruned through, and the model is never
corrupted.

Filter layouts returned by `filters`:

| layer | kernel shape | filter `f` |
|---|---|---|
| Conv1D/2D/3D | (*k, c_in / groups, c_out) | `kernel[..., f]` |
| Conv1D/2D/3DTranspose | (*k, c_out, c_in) | `kernel[..., f, :]` |
| SeparableConv1D/2D | pointwise (1, 1, c_in * m, c_out) | `pointwise[..., f]` |
| DepthwiseConv1D/2D | (*k, c_in, m) | output `c * m + j` is `kernel[..., c, j]` |
| Dense | (c_in, units) | `kernel[:, f]` |
| EinsumDense (dense over its last axis) | e.g. (c_in, units) | the kernel slice of output `f` |
| attention (`hos_keras.attention`) | q/k/v (d, h, d_k), output (h, d_v, d) | every weight of head (or key/value group) `f` |
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from hos_keras import activations
from hos_keras.activations import PER_CHANNEL_ACTIVATIONS
from hos_keras.errors import ArgumentTypeError

__all__ = [
    "PER_CHANNEL_ACTIVATIONS",
    "ActivationRule",
    "BatchNormalizationRule",
    "ConcatenateRule",
    "ConvRule",
    "ConvTransposeRule",
    "DenseRule",
    "DepthwiseConvRule",
    "EinsumDenseRule",
    "ElementwiseOp",
    "FlattenRule",
    "Freeze",
    "LayerRule",
    "PadOp",
    "PerChannel",
    "ReduceOp",
    "ReshapeRule",
    "SeparableConvRule",
    "SplitOp",
    "Stream",
    "Tie",
    "TraceContext",
    "filter_matrix",
    "get_rule",
    "register_layer_rule",
]


class TraceContext:
    """What a rule sees of one call while the channel analysis walks a graph.

    `hos_keras.channel_groups` passes an implementation of this interface to
    `LayerRule.trace`. Channels are tracked as arrays of slot ids, one per channel;
    slots that are tied share a class and are pruned together.

    Attributes:
        layer: The layer (or keras.ops operation) called.
        name: Its qualified name (`"outer/inner"` inside nested models).
        node: The Keras graph node of this call.
        inputs: One `(slots, axis)` pair per input tensor: the slot of each of its
            channels and the positive index of its channel axis.
        hidden_width: Whether the analysis prunes a transformer's hidden width
            (see `hos_keras.plan_pruning(hidden_width=True)`).
    """

    layer = None
    name = ""
    node = None
    inputs: Sequence[tuple[np.ndarray, int]] = ()
    #: Whether the hidden width of transformers (embeddings, normalisations,
    #: attention inputs and outputs) may be pruned; `False` freezes it.
    hidden_width = False

    @property
    def input_shapes(self) -> list[tuple]:
        """Shapes of the input tensors of this call."""
        return [tuple(t.shape) for t in self.node.input_tensors]

    @property
    def output_shapes(self) -> list[tuple]:
        """Shapes of the output tensors of this call."""
        return [tuple(t.shape) for t in self.node.output_tensors]

    def output(self, slots: np.ndarray, axis: int, index: int = 0) -> None:
        """Declares the channels of output `index` and their axis."""
        raise NotImplementedError

    def create(self, count: int, groups: int = 1) -> np.ndarray:
        """New channels owned by this layer (its filters); reused if shared.

        With `groups > 1` the `count` output positions repeat `count // groups`
        channels, once per group (a grouped convolution's output groups are tied).
        """
        raise NotImplementedError

    def fresh(self, count: int, reason: str = "reads another axis") -> np.ndarray:
        """New frozen channels that no layer produces (an axis read as channels,
        or outputs a layer never prunes), frozen with `reason`."""
        raise NotImplementedError

    def reads(self, slots: np.ndarray) -> None:
        """Declares that the layer's weights are indexed by these input channels."""
        raise NotImplementedError

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Ties channel i of `a` to channel i of `b`: they are pruned together."""
        raise NotImplementedError

    def freeze_slots(self, slots: np.ndarray, reason: str) -> None:
        """Marks channels as not prunable, with a short reason."""
        raise NotImplementedError

    def freeze(self, reason: str) -> None:
        """Freezes every input channel; the outputs get new, frozen channels."""
        raise NotImplementedError

    def reshaped(self, slots: np.ndarray) -> None:
        """Declares that the layer's config holds the channel count (Reshape)."""
        raise NotImplementedError


def _axis(layer, rank: int) -> int:
    """The positive channel axis of a layer with a `data_format`."""
    fmt = getattr(layer, "data_format", None) or keras.config.image_data_format()
    return 1 if fmt == "channels_first" else rank - 1


def _out_axis(in_axis: int, in_rank: int, out_rank: int) -> int:
    if out_rank == in_rank or in_axis == 1:
        return in_axis
    return out_rank - 1


class LayerRule:
    """Everything hos_keras knows about one layer type.

    The base rule freezes every channel that reaches the layer, counts its
    parameters and no MACs, and leaves its weights and config alone; subclasses
    override what their layer type does. Rules are stateless and shared by every
    layer of the type.
    """

    #: Whether layers of the type make new channels whose filters criteria score.
    produces = False
    #: Whether layers of the type have a filter matrix (producers, depthwise).
    has_filters = False
    #: Whether a producer's channels are its output tensor's channels, where the
    #: data criteria read them (an attention layer's heads are not).
    output_channels = True

    def creates(self, layer) -> bool:
        """Whether this layer makes new channels (some rules decide per layer)."""
        return self.produces

    def passed(self, layer, channels: int) -> int:
        """Output channels of a non-creating layer that receives `channels`."""
        return channels

    def trace(self, ctx: TraceContext) -> None:
        """Declares how channels flow through one call (see `TraceContext`)."""
        ctx.freeze("unknown layer type")

    def filters(self, layer) -> np.ndarray:
        """The `(weights_per_filter, n_filters)` matrix of a producer."""
        raise ArgumentTypeError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no output-channel "
            "kernel."
        )

    def slice_weights(self, layer, weights, keep_in, keep_out) -> list:
        """The weights without the removed channels.

        Args:
            layer: The original layer.
            weights: Arrays shaped like `layer.weights` (the values, or index
                arrays when surgery computes masks).
            keep_in: Sorted kept input-channel positions, or `None` if unchanged.
            keep_out: Sorted kept output-channel positions, or `None`.

        Returns:
            The sliced arrays, in the order of `layer.weights`.
        """
        return list(weights)

    def configure(self, config: dict, keep_in, keep_out, channels=None) -> dict:
        """The layer's config for the kept channels (`channels`: for Reshape)."""
        return config

    def widths(self, layer, node) -> tuple[int, int] | None:
        """`(c_in, c_out)` of a call whose channels are not the last axes of its
        tensors (an attention layer's heads); `None` for every other layer."""
        return None

    def cost(self, layer, node, c_in: int, c_out: int) -> tuple[int, int]:
        """`(params, macs)` of one call with `c_in` / `c_out` channels.

        See `hos_keras.profile` for the counting convention.
        """
        params = int(layer.count_params()) if getattr(layer, "built", False) else 0
        return params, 0


class Freeze(LayerRule):
    """A layer through which nothing is pruned, with the reason given.

    Args:
        reason: Why, in a few words (e.g. `"normalises over channels"`).
    """

    def __init__(self, reason: str):
        self.reason = reason

    def trace(self, ctx):
        ctx.freeze(self.reason)


class PerChannel(LayerRule):
    """A layer that acts on each channel alone (it may change the spatial axes).

    Its named weights hold one value per channel on their last axis and are sliced
    there; a weight whose last axis has size 1 is shared by all channels and kept.

    Args:
        *weights: Names of the per-channel weights (`w.name`, e.g. `"gamma"`).
        config_key: Name of a config argument holding the channel count, rewritten
            when channels are pruned (e.g. `"projection_dim"`). Defaults to `None`.

    Example:

    ```python
    hos_keras.register_layer_rule(MyScale, hos_keras.layer_rules.PerChannel("scale"))
    ```
    """

    def __init__(self, *weights: str, config_key: str | None = None):
        self.weights = tuple(weights)
        self.config_key = config_key

    def channel_axis(self, layer, rank: int) -> int:
        return _axis(layer, rank)

    def trace(self, ctx):
        if len(ctx.inputs) != 1 or len(ctx.node.output_tensors) != 1:
            ctx.freeze("a per-channel rule needs one input and one output")
            return
        slots, axis = ctx.inputs[0]
        in_rank, out_rank = len(ctx.input_shapes[0]), len(ctx.output_shapes[0])
        if self.channel_axis(ctx.layer, in_rank) != axis:
            ctx.freeze("works on another axis than the channels")
            return
        out_axis = _out_axis(axis, in_rank, out_rank)
        out_shape = ctx.output_shapes[0]
        if out_axis >= out_rank or out_shape[out_axis] != len(slots):
            ctx.freeze("changes the channel count")
            return
        if self._indexed(ctx.layer):
            ctx.reads(slots)
        ctx.output(slots, out_axis)

    def _indexed(self, layer) -> bool:
        return any(
            w.name in self.weights and len(w.shape) and int(w.shape[-1]) > 1
            for w in layer.weights
        )

    def slice_weights(self, layer, weights, keep_in, keep_out):
        if keep_in is None:
            return list(weights)
        return [
            np.take(w, keep_in, axis=-1)
            if v.name in self.weights and w.ndim and w.shape[-1] > 1
            else w
            for v, w in zip(layer.weights, weights, strict=True)
        ]

    def configure(self, config, keep_in, keep_out, channels=None):
        if self.config_key and keep_in is not None:
            config[self.config_key] = len(keep_in)
        return config

    def cost(self, layer, node, c_in, c_out):
        params = 0
        for w in layer.weights:
            size = int(np.prod(w.shape))
            if w.name in self.weights and len(w.shape) and int(w.shape[-1]) > 1:
                size = size // int(w.shape[-1]) * c_in
            params += size
        return params, 0


class BatchNormalizationRule(PerChannel):
    """BatchNormalization: per channel on its `axis` (a single axis)."""

    def __init__(self):
        super().__init__("gamma", "beta", "moving_mean", "moving_variance")

    def channel_axis(self, layer, rank):
        axis = layer.axis
        if isinstance(axis, (list, tuple)):
            return -1 if len(axis) != 1 else axis[0] % rank
        return axis % rank


class ActivationRule(PerChannel):
    """`keras.layers.Activation`: passes channels only for per-channel functions."""

    def trace(self, ctx):
        if not activations.is_elementwise(ctx.layer.activation):
            name = activations.name_of(ctx.layer.activation)
            ctx.freeze(f"activation {name!r} mixes channels or is unknown")
            return
        super().trace(ctx)

    def channel_axis(self, layer, rank):
        return rank - 1


class _LastAxis(PerChannel):
    """Element-wise layers that work on any axis (dropout, noise, ReLU, ...)."""

    def trace(self, ctx):
        if len(ctx.inputs) != 1:
            ctx.freeze("a per-channel rule needs one input")
            return
        slots, axis = ctx.inputs[0]
        if len(ctx.output_shapes[0]) != len(ctx.input_shapes[0]):
            ctx.freeze("changes the rank")
            return
        if self._indexed(ctx.layer):
            if axis != len(ctx.input_shapes[0]) - 1:
                ctx.freeze("its weights are indexed on another axis")
                return
            ctx.reads(slots)
        ctx.output(slots, axis)


class _Rescaling(_LastAxis):
    def trace(self, ctx):
        layer = ctx.layer
        if np.size(layer.scale) != 1 or np.size(layer.offset) != 1:
            ctx.freeze("its scale or offset has a value per channel")
            return
        super().trace(ctx)


def _freeze_unless_elementwise(ctx, out) -> None:
    """Freezes a producer's output channels if its activation mixes them."""
    activation = getattr(ctx.layer, "activation", None)
    if not activations.is_elementwise(activation):
        name = activations.name_of(activation)
        ctx.freeze_slots(out, f"activation {name!r} mixes channels")


class _Producer(LayerRule):
    """Layers whose filters create new channels from the input channels."""

    produces = True
    has_filters = True
    width_key = "filters"

    def channel_axis(self, layer, rank: int) -> int:
        return _axis(layer, rank)

    def groups(self, layer) -> int:
        return int(getattr(layer, "groups", 1) or 1)

    def trace(self, ctx):
        layer = ctx.layer
        if len(ctx.inputs) != 1:
            ctx.freeze("a producer called on several tensors")
            return
        slots, axis = ctx.inputs[0]
        in_rank = len(ctx.input_shapes[0])
        expected = self.channel_axis(layer, in_rank)
        if expected != axis:
            # The layer reads another axis as channels: the incoming channels are
            # frozen and the axis it reads gets fresh, frozen slots.
            ctx.freeze_slots(slots, "a layer reads them on another axis")
            slots = ctx.fresh(int(ctx.input_shapes[0][expected] or 0))
        groups = self.groups(layer)
        if groups > 1:
            # Input channel j of every group is read through the kernel's input
            # index j, so those channels are tied and every group keeps the same
            # count; likewise for the output groups below.
            per_group = slots.reshape(groups, -1)
            for row in per_group[1:]:
                ctx.tie(per_group[0], row)
        ctx.reads(slots)
        out_rank = len(ctx.output_shapes[0])
        out_axis = self.channel_axis(layer, out_rank)
        count = int(ctx.output_shapes[0][out_axis])
        out = ctx.create(count, groups)
        _freeze_unless_elementwise(ctx, out)
        ctx.output(out, out_axis)

    def configure(self, config, keep_in, keep_out, channels=None):
        if keep_out is not None:
            config[self.width_key] = len(keep_out)
        return config


class ConvRule(_Producer):
    """Conv1D/2D/3D, grouped included.

    A grouped convolution with one input channel per group (`groups` equal to
    the input channels: a depthwise convolution written as Conv2D) passes each
    input channel to its `filters // groups` outputs, as DepthwiseConv does;
    pruning an input channel removes its group. Other grouped convolutions tie
    channel j of every group, so that every group keeps the same count.
    """

    @staticmethod
    def depthwise(layer) -> bool:
        """Whether the layer has one input channel per group."""
        groups = int(getattr(layer, "groups", 1) or 1)
        return groups > 1 and int(layer.kernel.shape[-2]) == 1

    def creates(self, layer):
        return not self.depthwise(layer)

    def passed(self, layer, channels):
        return channels * (int(layer.filters) // int(layer.groups))

    def trace(self, ctx):
        layer = ctx.layer
        if not self.depthwise(layer):
            super().trace(ctx)
            return
        slots, axis = ctx.inputs[0]
        if len(ctx.inputs) != 1 or _axis(layer, len(ctx.input_shapes[0])) != axis:
            ctx.freeze("works on another axis than the channels")
            return
        ctx.reads(slots)
        out = np.repeat(slots, int(layer.filters) // int(layer.groups))
        _freeze_unless_elementwise(ctx, out)
        ctx.output(out, axis)

    def configure(self, config, keep_in, keep_out, channels=None):
        if keep_in is not None and config.get("groups", 1) > 1 and keep_out is None:
            multiplier = config["filters"] // config["groups"]
            config["groups"] = len(keep_in)
            config["filters"] = len(keep_in) * multiplier
            return config
        return super().configure(config, keep_in, keep_out, channels)

    def filters(self, layer):
        kernel = np.asarray(layer.kernel.numpy())
        return kernel.reshape(-1, kernel.shape[-1])

    def slice_weights(self, layer, weights, keep_in, keep_out):
        if self.depthwise(layer):
            if keep_in is None:
                return list(weights)
            multiplier = int(layer.filters) // int(layer.groups)
            out = _channel_indices(keep_in, multiplier)
            return [np.take(w, out, axis=-1) for w in weights]
        kernel, *bias = weights
        if keep_in is not None:
            # A grouped kernel holds one group's inputs; all groups keep the same.
            keep_in = keep_in[keep_in < kernel.shape[-2]]
            kernel = np.take(kernel, keep_in, axis=-2)
        if keep_out is not None:
            kernel = np.take(kernel, keep_out, axis=-1)
            bias = [b[keep_out] for b in bias]
        return [kernel, *bias]

    def cost(self, layer, node, c_in, c_out):
        first = _axis(layer, len(node.output_tensors[0].shape)) == 1
        k = int(np.prod(layer.kernel_size))
        groups = c_in if self.depthwise(layer) else self.groups(layer)
        params = k * (c_in // groups) * c_out + _bias(layer) * c_out
        out_shape = node.output_tensors[0].shape
        return params, _spatial(out_shape, first) * k * (c_in // groups) * c_out


class ConvTransposeRule(_Producer):
    """Conv1D/2D/3DTranspose (kernel `(*k, c_out, c_in)`)."""

    def filters(self, layer):
        kernel = np.moveaxis(np.asarray(layer.kernel.numpy()), -2, -1)
        return kernel.reshape(-1, kernel.shape[-1])

    def slice_weights(self, layer, weights, keep_in, keep_out):
        kernel, *bias = weights
        if keep_in is not None:
            kernel = np.take(kernel, keep_in, axis=-1)
        if keep_out is not None:
            kernel = np.take(kernel, keep_out, axis=-2)
            bias = [b[keep_out] for b in bias]
        return [kernel, *bias]

    def cost(self, layer, node, c_in, c_out):
        in_shape = node.input_tensors[0].shape
        first = _axis(layer, len(in_shape)) == 1
        k = int(np.prod(layer.kernel_size))
        params = k * c_in * c_out + _bias(layer) * c_out
        return params, _spatial(in_shape, first) * k * c_in * c_out


class SeparableConvRule(_Producer):
    """SeparableConv1D/2D: a depthwise kernel then a pointwise one."""

    def filters(self, layer):
        kernel = np.asarray(layer.pointwise_kernel.numpy())
        return kernel.reshape(-1, kernel.shape[-1])

    def slice_weights(self, layer, weights, keep_in, keep_out):
        depthwise, pointwise, *bias = weights
        if keep_in is not None:
            depthwise = depthwise[..., keep_in, :]
            pointwise = pointwise[
                ..., _channel_indices(keep_in, layer.depth_multiplier), :
            ]
        if keep_out is not None:
            pointwise = pointwise[..., keep_out]
            bias = [b[keep_out] for b in bias]
        return [depthwise, pointwise, *bias]

    def cost(self, layer, node, c_in, c_out):
        out_shape = node.output_tensors[0].shape
        first = _axis(layer, len(out_shape)) == 1
        k = int(np.prod(layer.kernel_size))
        m = layer.depth_multiplier
        params = k * c_in * m + c_in * m * c_out + _bias(layer) * c_out
        return params, _spatial(out_shape, first) * (k * c_in * m + c_in * m * c_out)


class DenseRule(_Producer):
    """Dense: acts on the last axis."""

    width_key = "units"

    def channel_axis(self, layer, rank):
        return rank - 1

    def filters(self, layer):
        kernel = np.asarray(layer.kernel.numpy())
        return kernel.reshape(-1, kernel.shape[-1])

    def slice_weights(self, layer, weights, keep_in, keep_out):
        kernel, *bias = weights
        if keep_in is not None:
            kernel = kernel[keep_in]
        if keep_out is not None:
            kernel = kernel[:, keep_out]
            bias = [b[keep_out] for b in bias]
        return [kernel, *bias]

    def cost(self, layer, node, c_in, c_out):
        rows = _positions(node.input_tensors[0].shape[1:-1])
        return c_in * c_out + _bias(layer) * c_out, rows * c_in * c_out


class EinsumDenseRule(DenseRule):
    """EinsumDense that is a Dense over its last axis, read from its equation.

    The equation must contract only the input's last axis with the kernel and
    make only the output's last axis from it, every other input axis passing to
    the output in order (`"btd,df->btf"`, `"...d,df->...f"`, `"abc,dc->abd"`);
    the bias, if any, lies on the output axis. Other equations (several kernel
    axes, such as an attention layer's `"abc,cde->abde"` projections) freeze:
    `AttentionRule` prunes those inside their attention layers.
    """

    width_key = "output_shape"

    @staticmethod
    def axes(layer) -> tuple[int, int] | None:
        """`(input axis, output axis)` of the kernel, or `None` if unsupported."""
        equation = layer.equation.replace("...", "")
        operands, _, out = equation.partition("->")
        inp, _, kernel = operands.partition(",")
        if len(kernel) != 2 or not inp or not out:
            return None
        contracted, produced = inp[-1], out[-1]
        if (
            set(kernel) != {contracted, produced}
            or contracted in out
            or produced in inp
            or inp[:-1] != out[:-1]
            or (layer.bias_axes or produced) != produced
        ):
            return None
        return kernel.index(contracted), kernel.index(produced)

    def trace(self, ctx):
        if self.axes(ctx.layer) is None:
            ctx.freeze(
                f"an EinsumDense that is not dense over its last axis "
                f"({ctx.layer.equation!r})"
            )
            return
        super().trace(ctx)

    def filters(self, layer):
        kernel = np.asarray(layer.kernel.numpy())
        axes = self.axes(layer)
        out_axis = axes[1] if axes else kernel.ndim - 1
        kernel = np.moveaxis(kernel, out_axis, -1)
        return kernel.reshape(-1, kernel.shape[-1])

    def slice_weights(self, layer, weights, keep_in, keep_out):
        in_axis, out_axis = self.axes(layer)
        kernel, *bias = weights
        if keep_in is not None:
            kernel = np.take(kernel, keep_in, axis=in_axis)
        if keep_out is not None:
            kernel = np.take(kernel, keep_out, axis=out_axis)
            bias = [b[keep_out] for b in bias]
        return [kernel, *bias]

    def configure(self, config, keep_in, keep_out, channels=None):
        if keep_out is not None:
            shape = config["output_shape"]
            if isinstance(shape, int):
                config["output_shape"] = len(keep_out)
            else:
                config["output_shape"] = [*shape[:-1], len(keep_out)]
        return config

    def cost(self, layer, node, c_in, c_out):
        rows = _positions(node.input_tensors[0].shape[1:-1])
        bias = c_out if getattr(layer, "bias", None) is not None else 0
        if self.axes(layer) is None:
            macs = _einsum_macs(
                layer.equation, node.input_tensors[0].shape, layer.kernel.shape
            )
            return int(layer.count_params()), macs
        return c_in * c_out + bias, rows * c_in * c_out


class DepthwiseConvRule(PerChannel):
    """DepthwiseConv1D/2D: repeats each input channel `depth_multiplier` times."""

    has_filters = True

    def passed(self, layer, channels):
        return channels * int(layer.depth_multiplier)

    def trace(self, ctx):
        if len(ctx.inputs) != 1:
            ctx.freeze("called on several tensors")
            return
        slots, axis = ctx.inputs[0]
        if self.channel_axis(ctx.layer, len(ctx.input_shapes[0])) != axis:
            ctx.freeze("works on another axis than the channels")
            return
        ctx.reads(slots)
        ctx.output(np.repeat(slots, ctx.layer.depth_multiplier), axis)

    def filters(self, layer):
        # Output channel c * m + j comes from kernel[..., c, j]: flattening the
        # last two axes in C order gives exactly that index.
        kernel = np.asarray(layer.kernel.numpy())
        return kernel.reshape(int(np.prod(kernel.shape[:-2])), -1)

    def slice_weights(self, layer, weights, keep_in, keep_out):
        if keep_in is None:
            return list(weights)
        kernel = weights[0][..., keep_in, :]
        rest = [
            w[_channel_indices(keep_in, layer.depth_multiplier)] for w in weights[1:]
        ]
        return [kernel, *rest]

    def cost(self, layer, node, c_in, c_out):
        out_shape = node.output_tensors[0].shape
        first = _axis(layer, len(out_shape)) == 1
        k = int(np.prod(layer.kernel_size))
        m = layer.depth_multiplier
        params = k * c_in * m + _bias(layer) * c_in * m
        return params, _spatial(out_shape, first) * k * c_in * m


class Tie(LayerRule):
    """Element-wise merges (Add, Multiply, ...): channel i of every input is tied.

    An input with a single channel broadcasts and is left alone (a
    squeeze-excitation gate of width 1).
    """

    def trace(self, ctx):
        _tie_inputs(ctx)


def _tie_inputs(ctx) -> None:
    entries = list(ctx.inputs)
    out_shape = ctx.output_shapes[0]
    if not entries or not out_shape:
        ctx.freeze("merges tensors without channels")
        return
    axis = max(entries, key=lambda e: len(e[0]))[1]
    out_rank = len(out_shape)
    if axis >= out_rank:
        ctx.freeze("merges tensors of another layout")
        return
    out_count = int(out_shape[axis] or 0)
    full = [(s, a) for s, a in entries if len(s) == out_count]
    broadcast = [(s, a) for s, a in entries if len(s) == 1 and out_count != 1]
    if (
        not full
        or len(full) + len(broadcast) != len(entries)
        or len({a for _, a in full}) != 1
        or any(len(shape) != out_rank for shape in ctx.input_shapes)
    ):
        ctx.freeze("merges tensors with mismatched channels")
        return
    first = full[0][0]
    for slots, _ in full[1:]:
        ctx.tie(first, slots)
    ctx.output(first, axis)


class ConcatenateRule(LayerRule):
    """Concatenate on the channel axis: channels side by side."""

    def trace(self, ctx):
        rank = len(ctx.input_shapes[0])
        axis = ctx.layer.axis % rank
        if any(a != axis for _, a in ctx.inputs):
            ctx.freeze("concatenates along another axis than the channels")
            return
        ctx.output(np.concatenate([s for s, _ in ctx.inputs]), axis)


class FlattenRule(LayerRule):
    """Flatten: each channel spreads over the spatial positions."""

    def trace(self, ctx):
        slots, axis = ctx.inputs[0]
        shape = ctx.input_shapes[0]
        rank = len(shape)
        spatial = [d for i, d in enumerate(shape[1:], start=1) if i != axis]
        if any(d is None for d in spatial) or axis not in (1, rank - 1):
            ctx.freeze("flattens a tensor of unknown size")
            return
        if ctx.layer.data_format == "channels_first" and rank > 2:
            # Keras moves axis 1 last before flattening such inputs.
            if axis != 1:
                ctx.freeze("flattens channels it reorders")
                return
            axis = rank - 1
        positions = int(np.prod(spatial, dtype=np.int64)) if spatial else 1
        if axis == rank - 1:
            out = np.tile(slots, positions)
        else:
            out = np.repeat(slots, positions)
        ctx.output(out, 1)


class ReshapeRule(LayerRule):
    """Reshape that keeps the channel axis last and whole (C order)."""

    def trace(self, ctx):
        slots, axis = ctx.inputs[0]
        in_shape, out_shape = ctx.input_shapes[0], ctx.output_shapes[0]
        if not (
            axis == len(in_shape) - 1
            and in_shape[-1] is not None
            and in_shape[-1] == out_shape[-1]
        ):
            ctx.freeze("reshapes the channel axis")
            return
        ctx.reshaped(slots)
        ctx.output(slots, len(out_shape) - 1)

    def configure(self, config, keep_in, keep_out, channels=None):
        if channels is not None:
            config["target_shape"] = [*config["target_shape"][:-1], int(channels)]
        return config


# keras.ops operations in functional graphs ------------------------------------


def _constants(node):
    """The non-tensor arguments of a call (scalars, arrays, None, ...)."""
    values = []
    for value in keras.tree.flatten((node.arguments.args, node.arguments.kwargs)):
        if not isinstance(value, keras.KerasTensor):
            values.append(value)
    return values


class ElementwiseOp(LayerRule):
    """A keras.ops operation applied element by element.

    With one tensor operand it passes channels; with several it ties them, as Add
    does. A constant operand must be a scalar: a constant with one value per channel
    would need slicing too, so it freezes.
    """

    def trace(self, ctx):
        for value in _constants(ctx.node):
            if hasattr(value, "shape") and int(np.prod(np.shape(value))) > 1:
                ctx.freeze("has a constant operand with several values")
                return
        if len(ctx.inputs) == 1:
            slots, axis = ctx.inputs[0]
            if ctx.output_shapes[0] != ctx.input_shapes[0]:
                ctx.freeze("changes the shape")
                return
            ctx.output(slots, axis)
            return
        _tie_inputs(ctx)


class ReduceOp(LayerRule):
    """A keras.ops reduction (mean, max, sum, ...) over axes other than channels."""

    def trace(self, ctx):
        if len(ctx.inputs) != 1:
            ctx.freeze("reduces several tensors")
            return
        slots, axis = ctx.inputs[0]
        rank = len(ctx.input_shapes[0])
        reduced = getattr(ctx.layer, "axis", None)
        if reduced is None:
            ctx.freeze("reduces over every axis")
            return
        reduced = {a % rank for a in np.atleast_1d(reduced).tolist()}
        if axis in reduced or 0 in reduced:
            ctx.freeze("reduces over the channel or batch axis")
            return
        out_axis = axis
        if not getattr(ctx.layer, "keepdims", False):
            out_axis = axis - sum(1 for a in reduced if a < axis)
        ctx.output(slots, out_axis)


class PadOp(LayerRule):
    """keras.ops.pad without padding on the channel axis."""

    def trace(self, ctx):
        slots, axis = ctx.inputs[0]
        pad = np.asarray(ctx.layer.pad_width, dtype=object)
        rank = len(ctx.input_shapes[0])
        if pad.ndim != 2 or pad.shape[0] != rank or tuple(pad[axis]) != (0, 0):
            ctx.freeze("pads the channel axis")
            return
        ctx.output(slots, axis)


class SplitOp(LayerRule):
    """keras.ops.split: along the channels into equal sections, or along others.

    Equal sections of the channels must stay equal after pruning, so channel i of
    every section is tied; a split along another axis passes the channels to every
    output.
    """

    def trace(self, ctx):
        slots, axis = ctx.inputs[0]
        rank = len(ctx.input_shapes[0])
        split_axis = ctx.layer.axis % rank
        outputs = len(ctx.node.output_tensors)
        if split_axis != axis:
            for index in range(outputs):
                ctx.output(slots, axis, index)
            return
        if not isinstance(ctx.layer.indices_or_sections, int):
            ctx.freeze("splits the channels at given indices")
            return
        sections = slots.reshape(outputs, -1)
        for index, section in enumerate(sections):
            ctx.tie(sections[0], section)
            ctx.output(section, axis, index)


class Stream(Freeze):
    """A layer that makes, reads or normalises a transformer's hidden width.

    Frozen with `reason` by default; when the channel analysis runs with
    `hidden_width=True`, `trace_stream` says how the hidden channels flow.
    """

    def trace(self, ctx):
        if ctx.hidden_width:
            self.trace_stream(ctx)
        else:
            ctx.freeze(self.reason)

    def trace_stream(self, ctx) -> None:
        ctx.freeze(self.reason)


class _Normalization(Stream):
    """LayerNormalization, RMSNormalization: their scale and bias are per channel
    of the last axis, but they normalise over all channels, so pruning through
    them changes the statistics (inexact; only with `hidden_width=True`)."""

    def __init__(self, *weights: str, reason: str = "normalises over channels"):
        super().__init__(reason)
        self.per_channel = _LastAxis(*weights)

    def trace_stream(self, ctx):
        rank = len(ctx.input_shapes[0])
        axis = getattr(ctx.layer, "axis", -1)
        axes = [a % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])]
        if axes != [rank - 1]:
            ctx.freeze(f"{self.reason} on another axis than the last")
            return
        self.per_channel.trace(ctx)

    def slice_weights(self, layer, weights, keep_in, keep_out):
        return self.per_channel.slice_weights(layer, weights, keep_in, keep_out)

    def cost(self, layer, node, c_in, c_out):
        return self.per_channel.cost(layer, node, c_in, c_out)


class _StreamProducer(Stream):
    """A layer that makes the hidden width from something else (token ids,
    positions, image patches): with `hidden_width=True` it is a producer whose
    weights all hold one value per hidden channel on their last axis.

    Args:
        reason: Why it freezes by default.
        config_key: The config argument holding the hidden width, if any.
    """

    produces = True

    def __init__(self, reason: str, config_key: str | None = None):
        super().__init__(reason)
        self.config_key = config_key

    def trace_stream(self, ctx):
        shape = ctx.output_shapes[0]
        if len(ctx.node.output_tensors) != 1 or shape[-1] is None:
            ctx.freeze(self.reason)
            return
        ctx.output(ctx.create(int(shape[-1])), len(shape) - 1)

    def filters(self, layer):
        return np.concatenate(
            [
                np.asarray(keras.ops.convert_to_numpy(w)).reshape(-1, w.shape[-1])
                for w in layer.weights
            ]
        )

    def slice_weights(self, layer, weights, keep_in, keep_out):
        if keep_out is None:
            return list(weights)
        return [np.take(w, keep_out, axis=-1) for w in weights]

    def configure(self, config, keep_in, keep_out, channels=None):
        if self.config_key and keep_out is not None:
            config[self.config_key] = len(keep_out)
        return config

    def cost(self, layer, node, c_in, c_out):
        params = int(layer.count_params()) if layer.built else 0
        width = int(node.output_tensors[0].shape[-1] or 0)
        return (params // width * c_out if width else params), 0


def _is_reverse(node) -> bool:
    args = node.arguments.args
    return bool(node.arguments.kwargs.get("reverse", len(args) > 1 and args[1]))


class _EmbeddingRule(_StreamProducer):
    """Embedding and ReversibleEmbedding: frozen (they make or read the hidden
    width) unless the hidden width is pruned, when the lookup makes it and a
    reverse call (the logits of a language model, hidden -> vocabulary) reads it
    (the same channels with tied weights). A reverse call costs
    `positions * hidden * vocabulary` MACs, a lookup none."""

    def __init__(self):
        super().__init__(
            "embeds tokens (the hidden width is not pruned)", config_key="output_dim"
        )

    def trace_stream(self, ctx):
        if not _is_reverse(ctx.node):
            super().trace_stream(ctx)
            return
        slots, axis = ctx.inputs[0]
        if axis != len(ctx.input_shapes[0]) - 1:
            ctx.freeze(self.reason)
            return
        ctx.reads(slots)
        if getattr(ctx.layer, "tie_weights", True):
            ctx.tie(ctx.create(len(slots)), slots)
        shape = ctx.output_shapes[0]
        ctx.output(
            ctx.fresh(int(shape[-1]), "the logits of a reverse embedding"),
            len(shape) - 1,
        )

    def filters(self, layer):
        return np.asarray(keras.ops.convert_to_numpy(layer.embeddings))

    def slice_weights(self, layer, weights, keep_in, keep_out):
        sliced = []
        for variable, values in zip(layer.weights, weights, strict=True):
            if variable.name == "reverse_embeddings":
                keep = keep_in if keep_in is not None else keep_out
                sliced.append(values if keep is None else np.take(values, keep, 0))
            else:
                keep = keep_out if keep_out is not None else keep_in
                sliced.append(values if keep is None else np.take(values, keep, -1))
        return sliced

    def configure(self, config, keep_in, keep_out, channels=None):
        keep = keep_out if keep_out is not None else keep_in
        if keep is not None:
            config["output_dim"] = len(keep)
        return config

    def cost(self, layer, node, c_in, c_out):
        params = int(layer.count_params()) if layer.built else 0
        hidden, vocabulary = int(layer.output_dim), int(layer.input_dim)
        if not _is_reverse(node):
            return params // hidden * c_out, 0
        shape = node.input_tensors[0].shape
        return params // hidden * c_in, _positions(shape[1:-1]) * c_in * vocabulary


class _GetItem(Stream):
    """`x[...]` (keras.ops GetItem): frozen by default; with the hidden width
    pruned, an index that keeps the last (channel) axis whole passes it (a
    classifier reading the first token, `x[:, 0, :]`)."""

    def trace_stream(self, ctx):
        key = ctx.node.arguments.args[1] if len(ctx.node.arguments.args) > 1 else None
        key = key if isinstance(key, tuple) else (key,)
        in_shape, out_shape = ctx.input_shapes[0], ctx.output_shapes[0]
        slots, axis = ctx.inputs[0]
        whole = slice(None, None, None)
        if (
            axis != len(in_shape) - 1
            or any(k is None or k is Ellipsis for k in key)
            or not (len(key) < len(in_shape) or key[-1] == whole)
            or len(out_shape) < 2
            or out_shape[-1] != in_shape[-1]
        ):
            ctx.freeze(self.reason)
            return
        ctx.output(slots, len(out_shape) - 1)


class _MatmulOp(Freeze):
    """keras.ops.matmul: frozen, its MACs counted from the shapes."""

    def __init__(self):
        super().__init__("multiplies matrices over the channels")

    def cost(self, layer, node, c_in, c_out):
        shapes = [t.shape for t in node.input_tensors]
        out = node.output_tensors[0].shape
        if not shapes:
            return 0, 0
        inner = shapes[0][-1]
        if inner is None or any(d is None for d in out[1:]):
            return 0, 0
        return 0, int(np.prod(out[1:], dtype=np.int64)) * int(inner)


class _ConvOp(Freeze):
    """keras.ops.conv: frozen, its MACs counted from the shapes (channels last)."""

    def __init__(self):
        super().__init__("convolves with a kernel tensor")

    def cost(self, layer, node, c_in, c_out):
        if len(node.input_tensors) < 2:
            return 0, 0
        kernel = node.input_tensors[1].shape
        out = node.output_tensors[0].shape
        if any(d is None for d in (*kernel, *out[1:])):
            return 0, 0
        spatial = int(np.prod(out[1:-1], dtype=np.int64))
        return 0, spatial * int(np.prod(kernel, dtype=np.int64))


# Helpers ---------------------------------------------------------------------


def _bias(layer) -> int:
    return 1 if getattr(layer, "use_bias", False) else 0


def _spatial(shape, channels_first: bool) -> int:
    return _positions(shape[2:] if channels_first else shape[1:-1])


def _einsum_macs(equation: str, in_shape, kernel_shape) -> int:
    """MACs of one `input, kernel` einsum: the product of the sizes of all its
    indices but the batch axis (an unknown size counts as 1)."""
    operands = equation.partition("->")[0]
    inp, _, kernel = operands.partition(",")
    sizes = {}
    if inp.startswith("..."):
        inp = inp[3:]
        leading = _positions(in_shape[1 : len(in_shape) - len(inp)])
        sizes.update(zip(inp, in_shape[len(in_shape) - len(inp) :], strict=True))
    else:
        leading = 1
        sizes.update(zip(inp[1:], in_shape[1:], strict=True))
    sizes.update(zip(kernel, kernel_shape, strict=True))
    return leading * _positions(sizes.values())


def _positions(dims) -> int:
    """The number of positions over `dims`; an unknown dimension counts as 1."""
    return int(np.prod([1 if d is None else int(d) for d in dims], dtype=np.int64))


def _channel_indices(keep: np.ndarray, multiplier: int) -> np.ndarray:
    """Indices of the outputs c * m + j of the kept input channels c."""
    keep = np.asarray(keep, dtype=np.int64)
    return (keep[:, None] * multiplier + np.arange(multiplier)[None, :]).reshape(-1)


# The table -------------------------------------------------------------------

_RULES: dict[type, LayerRule] = {}
# Rules for classes named by their path ("module.ClassName"), looked up without
# importing their library.
_BY_PATH: dict[str, LayerRule] = {}


def register_layer_rule(layer_class: type | str, rule: LayerRule) -> None:
    """Teaches hos_keras how a layer type (or keras.ops operation) handles channels.

    The rule replaces any earlier one for exactly this class and applies to its
    subclasses that do not override `call`. Register before planning; a model
    planned earlier keeps the groups it had.

    Args:
        layer_class: A subclass of `keras.Operation` (every Keras layer is one),
            or the class's full path `"module.ClassName"` to describe a layer of
            a library that may not be imported (e.g. keras-hub's layers).
        rule: A `LayerRule` instance, e.g. `PerChannel("scale")` for a layer that
            scales each channel by its own weight.

    Raises:
        ArgumentTypeError: if `layer_class` is neither an Operation class nor a
            class path, or `rule` is not a `LayerRule`.

    Example:

    ```python
    @keras.saving.register_keras_serializable()
    class ChannelScale(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), name="scale")

        def call(self, x):
            return x * self.scale

    hos_keras.register_layer_rule(
        ChannelScale, hos_keras.layer_rules.PerChannel("scale")
    )
    ```
    """
    by_path = isinstance(layer_class, str) and "." in layer_class
    if not by_path and not (
        isinstance(layer_class, type) and issubclass(layer_class, keras.Operation)
    ):
        raise ArgumentTypeError(
            f"Received layer_class={layer_class!r}; pass a keras.layers.Layer "
            "subclass (the class, not an instance) or its full path, e.g. "
            "'keras_hub.src.layers.modeling.cached_multi_head_attention."
            "CachedMultiHeadAttention'."
        )
    if not isinstance(rule, LayerRule):
        raise ArgumentTypeError(
            f"Received rule={rule!r} of type {type(rule).__name__}; pass a "
            "hos_keras.layer_rules.LayerRule instance, e.g. "
            "hos_keras.layer_rules.PerChannel('scale')."
        )
    if by_path:
        _BY_PATH[layer_class] = rule
    else:
        _RULES[layer_class] = rule


def table_key() -> tuple:
    """What identifies the table of rules now (a traced graph is valid while
    it stays the same)."""
    rules = tuple((cls, id(rule)) for cls, rule in _RULES.items())
    paths = tuple((path, id(rule)) for path, rule in _BY_PATH.items())
    return rules, paths, activations.registry_key()


def _lookup(cls: type) -> LayerRule | None:
    rule = _RULES.get(cls)
    if rule is None and _BY_PATH:
        rule = _BY_PATH.get(f"{cls.__module__}.{cls.__qualname__}")
    return rule


def get_rule(layer) -> LayerRule | None:
    """The rule for a layer or operation, or `None` when hos_keras has none.

    The exact class is looked up first (by class, then by path), then each base
    class, as long as the layer's class does not override that base's `call`.
    """
    cls = type(layer)
    rule = _lookup(cls)
    if rule is not None:
        return rule
    for base in cls.__mro__[1:]:
        rule = _lookup(base)
        if rule is not None:
            if getattr(cls, "call", None) is getattr(base, "call", None):
                return rule
            return None
    return None


_HUB_NORMALIZATIONS = (
    "layers.modeling.rms_normalization.RMSNormalization",
    "models.gemma.rms_normalization.RMSNormalization",
    "models.llama.llama_layernorm.LlamaLayerNorm",
    "models.mistral.mistral_layer_norm.MistralLayerNormalization",
    "models.qwen.qwen_layernorm.QwenLayerNorm",
    "models.phi3.phi3_layernorm.Phi3LayerNorm",
)


def _register_builtins() -> None:
    L = keras.layers
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D):
        _RULES[cls] = ConvRule()
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        _RULES[cls] = ConvTransposeRule()
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        _RULES[cls] = SeparableConvRule()
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        _RULES[cls] = DepthwiseConvRule()
    _RULES[L.Dense] = DenseRule()
    _RULES[L.EinsumDense] = EinsumDenseRule()
    _RULES[L.BatchNormalization] = BatchNormalizationRule()
    _RULES[L.PReLU] = _LastAxis("alpha")
    _RULES[L.Activation] = ActivationRule()
    for cls in (
        L.ReLU,
        L.LeakyReLU,
        L.ELU,
        L.Dropout,
        L.SpatialDropout1D,
        L.SpatialDropout2D,
        L.SpatialDropout3D,
        L.GaussianDropout,
        L.GaussianNoise,
        L.AlphaDropout,
        L.ActivityRegularization,
        L.Identity,
    ):
        _RULES[cls] = _LastAxis()
    _RULES[L.Rescaling] = _Rescaling()
    _RULES[L.Normalization] = _LastAxis("mean", "variance", "count")
    for cls in (
        L.MaxPooling1D,
        L.MaxPooling2D,
        L.MaxPooling3D,
        L.AveragePooling1D,
        L.AveragePooling2D,
        L.AveragePooling3D,
        L.GlobalAveragePooling1D,
        L.GlobalAveragePooling2D,
        L.GlobalAveragePooling3D,
        L.GlobalMaxPooling1D,
        L.GlobalMaxPooling2D,
        L.GlobalMaxPooling3D,
        L.ZeroPadding1D,
        L.ZeroPadding2D,
        L.ZeroPadding3D,
        L.Cropping1D,
        L.Cropping2D,
        L.Cropping3D,
        L.UpSampling1D,
        L.UpSampling2D,
        L.UpSampling3D,
    ):
        _RULES[cls] = PerChannel()
    for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum):
        _RULES[cls] = Tie()
    _RULES[L.Concatenate] = ConcatenateRule()
    _RULES[L.Flatten] = FlattenRule()
    _RULES[L.Reshape] = ReshapeRule()
    for cls in (L.Embedding, getattr(L, "ReversibleEmbedding", None)):
        if cls is not None:
            _RULES[cls] = _EmbeddingRule()
    _RULES[L.Softmax] = Freeze("softmax normalises over channels")
    _RULES[L.LayerNormalization] = _Normalization("gamma", "beta")
    rms = getattr(L, "RMSNormalization", None)
    if rms is not None:
        _RULES[rms] = _Normalization("scale")
    # keras-hub's own normalisations, by path (keras-hub need not be installed).
    for path in _HUB_NORMALIZATIONS:
        _BY_PATH[f"keras_hub.src.{path}"] = Freeze("normalises over channels")
    _BY_PATH["keras_hub.src.layers.modeling.position_embedding.PositionEmbedding"] = (
        _StreamProducer("unknown layer type")
    )
    _BY_PATH["keras_hub.src.models.vit.vit_layers.ViTPatchingAndEmbedding"] = (
        _StreamProducer(
            "a subclassed layer with weights of its own", config_key="hidden_dim"
        )
    )
    _RULES[L.GroupNormalization] = Freeze("normalises over channel groups")

    # Layers of keras.applications models.
    from keras.src.applications import convnext, inception_resnet_v2

    _RULES[convnext.LayerScale] = PerChannel("gamma", config_key="projection_dim")
    _RULES[inception_resnet_v2.CustomScaleLayer] = Tie()

    _register_ops()


_ELEMENTWISE_OPS = {
    "numpy": (
        "Abs Absolute Fabs Add Subtract Multiply Divide TrueDivide DivideNoNan "
        "FloorDivide Mod Fmod Power Maximum Minimum Fmax Fmin Negative Square Sqrt "
        "Exp Exp2 Expm1 Log Log10 Log1p Log2 Sin Cos Tan Sinh Cosh Tanh Arctan "
        "Sign Floor Ceil Round Trunc Reciprocal Clip Where Cbrt Copy NanToNum"
    ),
    "nn": (
        "Relu Relu6 Sigmoid SparseSigmoid Softplus Softsign SoftShrink SparsePlus "
        "Silu Squareplus LogSigmoid LeakyRelu HardSigmoid HardSilu Elu Selu Gelu "
        "Celu TanhShrink HardTanh HardShrink Threshold"
    ),
    "core": "Cast StopGradient",
    "math": "Rsqrt Erf Erfc",
}
_REDUCE_OPS = "Mean Max Min Amax Amin Sum Var Std Prod"


def _register_ops() -> None:
    from keras.src.ops import core, nn
    from keras.src.ops import math as math_ops
    from keras.src.ops import numpy as numpy_ops

    modules = {"numpy": numpy_ops, "nn": nn, "core": core, "math": math_ops}
    for module, names in _ELEMENTWISE_OPS.items():
        for name in names.split():
            cls = getattr(modules[module], name, None)
            if cls is not None:
                _RULES[cls] = ElementwiseOp()
    for name in _REDUCE_OPS.split():
        cls = getattr(numpy_ops, name, None)
        if cls is not None:
            _RULES[cls] = ReduceOp()
    _RULES[numpy_ops.Pad] = PadOp()
    _RULES[numpy_ops.Split] = SplitOp()
    _RULES[numpy_ops.Matmul] = _MatmulOp()
    _RULES[numpy_ops.GetItem] = _GetItem("unknown operation")
    _RULES[nn.Conv] = _ConvOp()
    for name in ("Softmax", "LogSoftmax", "Sparsemax", "Glu"):
        _RULES[getattr(nn, name)] = Freeze("mixes or halves the channels")


_register_builtins()


def filter_matrix(layer) -> np.ndarray:
    """The filter matrix of a producer layer (see the module docstring).

    Raises:
        ArgumentTypeError: if the layer is not a built layer with filters.
    """
    rule = get_rule(layer)
    if rule is None or not (rule.has_filters or isinstance(rule, _StreamProducer)):
        raise ArgumentTypeError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no output-channel "
            "kernel; expected a built Conv, ConvTranspose, SeparableConv, "
            "DepthwiseConv or Dense layer (or a registered producer rule)."
        )
    if not layer.built:
        raise ArgumentTypeError(
            f"Layer {layer.name!r} is not built; call the model on data or build it "
            "first."
        )
    return rule.filters(layer)
