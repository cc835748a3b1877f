"""Graph analysis: which output channels of a Keras model are pruned together.

This module reads the structure of a functional (or Sequential) Keras 3 model; it
does no math and never changes the model. Every channel of every tensor is traced
back to the layer that produced it:

- producers (Conv, ConvTranspose, SeparableConv, Dense) create channels; their
  filters are what criteria score;
- per-channel layers (BatchNormalization, activations, pooling, padding, dropout,
  PReLU, DepthwiseConv) pass channels through, DepthwiseConv repeating each one
  `depth_multiplier` times, and Flatten spreading each one over the spatial
  positions;
- element-wise merges (Add, Subtract, Multiply including squeeze-excitation
  broadcasting, Average, Maximum, Minimum) tie channel i of every input together;
- Concatenate places its inputs' channels side by side;
- a grouped convolution ties channel j of each of its input groups (all read
  through the kernel's input index j), and likewise channel j of each output group;
- layers that read channels as input features (Conv, Dense, SeparableConv,
  ConvTranspose) lose the input rows of removed channels.

Channels tied together form a `ChannelGroup`, the unit of pruning (the "group" of
Torch-Pruning's DepGraph: Fang et al., "DepGraph: Towards Any Structural Pruning",
CVPR 2023). A group is frozen, with the reason recorded, when any of its channels
reaches something this analysis does not understand (Lambda, custom layers,
Reshape, Permute, LayerNormalization over channels, softmax,
nested models) or a model output: a frozen group is never pruned, so the model is
never corrupted.

Keras exposes the functional graph through `Functional._nodes_by_depth` and the
nodes' `input_tensors` / `output_tensors`; this module is the one place that reads
them.
"""

from __future__ import annotations

import dataclasses
import warnings

import keras
import numpy as np

from hos_keras import kernels
from hos_keras.errors import UnsupportedModelError

__all__ = [
    "PRODUCER_TYPES",
    "ChannelGraph",
    "ChannelGroup",
    "channel_groups",
    "functional_nodes",
    "get_layer",
]


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together.

    Attributes:
        name: The group's name: its first producer's name.
        producers: Layers whose output channels (filters) belong to the group.
        channels: Number of channels of the group.
        members: Every layer whose weights lose slices when the group is pruned:
            the producers, per-channel layers with weights (BatchNormalization,
            DepthwiseConv, PReLU) and the layers reading the channels as input.
        frozen: Why the group cannot be pruned; empty when it can.
    """

    name: str
    producers: tuple[str, ...]
    channels: int
    members: tuple[str, ...]
    frozen: str = ""

    @property
    def prunable(self) -> bool:
        """Whether the group may be pruned."""
        return not self.frozen


@dataclasses.dataclass
class ChannelGraph:
    """The channel groups of a model and where each group's channels appear.

    Attributes:
        groups: All groups with at least one producer, in graph order.
        classes: For each group, the channel-class id of each of its channels.
        inputs: For each layer with weights indexed by input channel, the class
            id of every input channel position (-1: not from a producer).
        outputs: For each producer, the class id of every output channel.
        reshapes: For each Reshape that keeps the channels last, the class id of
            every channel (its `target_shape` must follow a pruning).
        tensors: For every layer, the class id of each channel of its (first)
            output, e.g. to match a teacher's features to a pruned student's.
    """

    groups: list[ChannelGroup]
    classes: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    reshapes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    tensors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def group(self, name: str) -> ChannelGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    @property
    def prunable(self) -> list[ChannelGroup]:
        """The groups that may be pruned."""
        return [g for g in self.groups if g.prunable]

    def removed_classes(self, keeps) -> np.ndarray:
        """Class ids of the channels a pruning removes.

        Args:
            keeps: Mapping from group name to the sorted indices of the group
                channels kept.

        Returns:
            int64 array of the class ids of every channel not kept.
        """
        removed = [
            self.classes[name][np.setdiff1d(np.arange(len(self.classes[name])), keep)]
            for name, keep in keeps.items()
        ]
        return np.concatenate(removed) if removed else np.zeros(0, np.int64)

    def kept_positions(self, removed_classes: np.ndarray):
        """Kept input and output positions of every layer affected by a removal.

        Args:
            removed_classes: Class ids of the channels removed.

        Returns:
            `(inputs, outputs)`: dicts from layer name to the sorted positions that
            survive, only for layers that lose at least one position.
        """
        removed = np.asarray(removed_classes, dtype=np.int64)
        result = []
        for table in (self.inputs, self.outputs):
            kept = {}
            for name, classes in table.items():
                mask = ~np.isin(classes, removed)
                if not mask.all():
                    kept[name] = np.flatnonzero(mask)
            result.append(kept)
        return tuple(result)


def get_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """A layer by name; `"outer/inner"` reaches into nested models."""
    layer = model
    for part in name.split("/"):
        layer = layer.get_layer(part)
    return layer


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

_COUPLING_ACTIVATIONS = ("softmax", "log_softmax")
PRODUCER_TYPES = (
    kernels.CONV_TYPES
    + kernels.CONV_TRANSPOSE_TYPES
    + kernels.SEPARABLE_TYPES
    + (keras.layers.Dense,)
)
_CHANNEL_WEIGHTED = (
    PRODUCER_TYPES
    + kernels.DEPTHWISE_TYPES
    + (keras.layers.BatchNormalization, keras.layers.PReLU)
)
_MERGES = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
)


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def _channel_axis(layer, rank: int) -> int:
    """Positive index of the channel axis a layer works on, for an input rank."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.axis % rank
    if isinstance(layer, keras.layers.Dense):
        return rank - 1
    fmt = getattr(layer, "data_format", "channels_last")
    return 1 if fmt == "channels_first" else rank - 1


class _Slots:
    """Union-find over channel slots, with the producer and freeze reason of each."""

    def __init__(self):
        self.parent: list[int] = []
        self.owner: list[str | None] = []
        self.reason: dict[int, str] = {}

    def new(self, count: int, owner: str | None = None, reason: str = ""):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.owner.extend([owner] * count)
        slots = np.arange(start, start + count, dtype=np.int64)
        if reason:
            self.freeze(slots, reason)
        return slots

    def find(self, slot: int) -> int:
        root = slot
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[slot] != root:
            self.parent[slot], slot = root, self.parent[slot]
        return root

    def union(self, a, b) -> None:
        for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def freeze(self, slots, reason: str) -> None:
        for slot in np.asarray(slots).tolist():
            self.reason.setdefault(slot, reason)

    def roots(self, slots) -> np.ndarray:
        return np.array(
            [self.find(s) for s in np.asarray(slots).tolist()], dtype=np.int64
        )


class _Tracer:
    """Walks the graph once, assigning channel slots to every tensor."""

    def __init__(self, model):
        self.slots = _Slots()
        self.tensors: dict[int, tuple[np.ndarray, int]] = {}
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}
        self.reshapes: dict[str, np.ndarray] = {}
        self.layer_outputs: dict[str, np.ndarray] = {}
        self.order: list[str] = []
        self.model = model
        self.prefix = ""
        self.calls: dict[int, int] = {}

    # Helpers -------------------------------------------------------------
    def _opaque(self, tensor, reason: str) -> None:
        """Channels from outside the analysis: new slots, frozen."""
        shape = tensor.shape
        rank = len(shape)
        count = int(shape[-1]) if rank >= 2 and shape[-1] is not None else 0
        self.tensors[id(tensor)] = (self.slots.new(count, reason=reason), rank - 1)

    def _freeze_inputs(self, node, reason: str) -> None:
        for tensor in node.input_tensors:
            slots, _ = self.tensors[id(tensor)]
            self.slots.freeze(slots, reason)

    def _opaque_node(self, node, reason: str) -> None:
        self._freeze_inputs(node, reason)
        for tensor in node.output_tensors:
            self._opaque(tensor, reason)

    def _record_input(self, layer, slots) -> None:
        """A layer whose weights are indexed by input channel; shared calls tie."""
        name = self.prefix + layer.name
        if name in self.inputs:
            previous = self.inputs[name]
            if len(previous) != len(slots):
                self.slots.freeze(slots, f"shared layer {name!r}")
                return
            self.slots.union(previous, slots)
        else:
            self.inputs[name] = slots

    def _pass(self, node, slots, axis) -> None:
        self.tensors[id(node.output_tensors[0])] = (slots, axis)

    # The walk ------------------------------------------------------------
    def trace(self) -> None:
        self._walk(self.model)
        for tensor in _functional(self.model).outputs:
            slots, _ = self.tensors[id(tensor)]
            self.slots.freeze(slots, "its channels reach a model output")

    def _walk(self, model) -> None:
        nodes = functional_nodes(model)
        for node in nodes:
            key = id(node.operation)
            self.calls[key] = self.calls.get(key, 0) + 1
        for node in nodes:
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer) or node.is_input:
                for tensor in node.output_tensors:
                    if id(tensor) not in self.tensors:
                        self._opaque(tensor, "channels of a model input")
                continue
            for tensor in node.input_tensors:
                if id(tensor) not in self.tensors:
                    self._opaque(tensor, "channels from outside the graph")
            self._visit(node, layer)
            first = node.output_tensors[0] if node.output_tensors else None
            if first is not None and id(first) in self.tensors:
                self.layer_outputs[self.prefix + layer.name] = self.tensors[id(first)][
                    0
                ]

    def _nested(self, node, model) -> None:
        """Traces a model used as a layer, its layers named `outer/inner`."""
        try:
            inner = _functional(model)
        except UnsupportedModelError:
            self._opaque_node(
                node, f"its channels reach subclassed model {model.name!r}"
            )
            return
        if self.calls.get(id(model), 0) > 1 or len(inner.inputs) != len(
            node.input_tensors
        ):
            self._opaque_node(
                node, f"its channels reach nested model {model.name!r} used twice"
            )
            return
        for outer, inner_input in zip(node.input_tensors, inner.inputs, strict=True):
            self.tensors[id(inner_input)] = self.tensors[id(outer)]
        saved = self.prefix
        self.prefix = f"{saved}{model.name}/"
        self._walk(inner)
        self.prefix = saved
        for outer, inner_output in zip(node.output_tensors, inner.outputs, strict=True):
            self.tensors[id(outer)] = self.tensors[id(inner_output)]

    def _visit(self, node, layer) -> None:
        name, kind = self.prefix + layer.name, type(layer).__name__
        if isinstance(layer, keras.Model):
            self._nested(node, layer)
            return
        if not node.input_tensors:
            for tensor in node.output_tensors:
                self._opaque(tensor, f"channels made by {name!r} ({kind})")
            return
        in_slots, axis = self.tensors[id(node.input_tensors[0])]
        rank = len(node.input_tensors[0].shape)
        if isinstance(layer, _CHANNEL_WEIGHTED):
            expected = (
                rank - 1
                if isinstance(layer, keras.layers.PReLU)
                else (_channel_axis(layer, rank))
            )
            if expected != axis:
                # The layer reads another axis as channels: the incoming channels
                # are frozen and the axis it reads gets fresh, frozen slots.
                reason = f"its channels reach {name!r} ({kind}) on another axis"
                self.slots.freeze(in_slots, reason)
                count = int(node.input_tensors[0].shape[expected] or 0)
                in_slots, axis = self.slots.new(count, reason=reason), expected
        if isinstance(layer, PRODUCER_TYPES):
            self._producer(node, layer, in_slots, rank)
        elif isinstance(layer, kernels.DEPTHWISE_TYPES):
            self._record_input(layer, in_slots)
            self._pass(node, np.repeat(in_slots, layer.depth_multiplier), axis)
        elif isinstance(layer, (keras.layers.BatchNormalization, keras.layers.PReLU)):
            if any(int(w.shape[-1]) > 1 for w in layer.weights):
                self._record_input(layer, in_slots)
            self._pass(node, in_slots, axis)
        elif isinstance(layer, _ELEMENTWISE):
            self._pass(node, in_slots, axis)
        elif isinstance(layer, keras.layers.Activation):
            if _activation_name(layer) in _COUPLING_ACTIVATIONS:
                self._opaque_node(node, f"its channels reach softmax {name!r}")
            else:
                self._pass(node, in_slots, axis)
        elif isinstance(layer, _SPATIAL):
            if _channel_axis(layer, rank) != axis:
                self._opaque_node(
                    node, f"its channels reach {name!r} ({kind}) on another axis"
                )
                return
            out_rank = len(node.output_tensors[0].shape)
            out_axis = axis if out_rank == rank else (1 if axis == 1 else out_rank - 1)
            self._pass(node, in_slots, out_axis)
        elif isinstance(layer, _MERGES):
            self._merge(node, layer)
        elif isinstance(layer, keras.layers.Concatenate):
            self._concatenate(node, layer)
        elif isinstance(layer, keras.layers.Flatten):
            self._flatten(node, layer, in_slots, axis)
        elif isinstance(layer, keras.layers.Reshape) and self._keeps_last_axis(
            node, axis
        ):
            out_rank = len(node.output_tensors[0].shape)
            self.reshapes[name] = in_slots
            self._pass(node, in_slots, out_rank - 1)
        else:
            self._opaque_node(
                node,
                f"its channels reach {name!r} ({kind}), which couples, reshapes or "
                "is unknown to the channel analysis",
            )

    def _producer(self, node, layer, in_slots, rank) -> None:
        name = self.prefix + layer.name
        out = node.output_tensors[0]
        out_axis = _channel_axis(layer, len(out.shape))
        groups = getattr(layer, "groups", 1)
        if groups > 1:
            # Grouped convolution: input channel j of every group is read through
            # the kernel's input index j, so those channels are tied and every
            # group keeps the same count; likewise for the output groups below.
            per_group = in_slots.reshape(groups, -1)
            for row in per_group[1:]:
                self.slots.union(per_group[0], row)
        self._record_input(layer, in_slots)
        if name in self.outputs:
            slots = self.outputs[name]
        else:
            count = int(out.shape[out_axis])
            slots = np.tile(self.slots.new(count // groups, owner=name), groups)
            self.outputs[name] = slots
            self.order.append(name)
        if _activation_name(layer) in _COUPLING_ACTIVATIONS:
            self.slots.freeze(slots, "its activation is a softmax over channels")
        self.tensors[id(out)] = (slots, out_axis)

    @staticmethod
    def _keeps_last_axis(node, axis) -> bool:
        """A reshape that leaves the channel axis last and whole (C order)."""
        in_shape = node.input_tensors[0].shape
        out_shape = node.output_tensors[0].shape
        return (
            axis == len(in_shape) - 1
            and in_shape[-1] is not None
            and in_shape[-1] == out_shape[-1]
        )

    def _merge(self, node, layer) -> None:
        entries = [self.tensors[id(t)] for t in node.input_tensors]
        out_count = int(node.output_tensors[0].shape[entries[0][1]] or 0)
        full = [(s, a) for s, a in entries if len(s) == out_count]
        broadcast = [(s, a) for s, a in entries if len(s) == 1 and out_count != 1]
        axes = {a for _, a in full}
        if not full or len(full) + len(broadcast) != len(entries) or len(axes) != 1:
            self._opaque_node(
                node, f"its channels reach {layer.name!r} with mismatched channels"
            )
            return
        first = full[0][0]
        for slots, _ in full[1:]:
            self.slots.union(first, slots)
        self._pass(node, first, full[0][1])

    def _concatenate(self, node, layer) -> None:
        entries = [self.tensors[id(t)] for t in node.input_tensors]
        rank = len(node.input_tensors[0].shape)
        axis = layer.axis % rank
        if any(a != axis for _, a in entries):
            self._opaque_node(
                node, f"its channels reach {layer.name!r} on another axis"
            )
            return
        self._pass(node, np.concatenate([s for s, _ in entries]), axis)

    def _flatten(self, node, layer, in_slots, axis) -> None:
        shape = node.input_tensors[0].shape
        rank = len(shape)
        spatial = [d for i, d in enumerate(shape[1:], start=1) if i != axis]
        if any(d is None for d in spatial) or axis not in (1, rank - 1):
            self._opaque_node(
                node, f"its channels reach {layer.name!r} (Flatten) with unknown size"
            )
            return
        if layer.data_format == "channels_first" and rank > 2:
            # Keras moves axis 1 last before flattening such inputs.
            axis = rank - 1 if axis == 1 else -1
            if axis < 0:
                self._opaque_node(
                    node, f"its channels reach {layer.name!r} (Flatten) reordered"
                )
                return
        positions = int(np.prod(spatial, dtype=np.int64)) if spatial else 1
        if axis == rank - 1:
            slots = np.tile(in_slots, positions)
        else:
            slots = np.repeat(in_slots, positions)
        self._pass(node, slots, 1)


def channel_groups(model: keras.Model, warn: bool = True) -> ChannelGraph:
    """Finds the groups of channels that must be pruned together.

    Args:
        model: A built functional or Sequential Keras model (not modified).
        warn: Warn, naming the layer, when a layer the analysis does not know
            freezes channels. Defaults to `True`.

    Returns:
        A `ChannelGraph`: every group (prunable or frozen, with the reason) and,
        for every layer whose weights are indexed by channel, which group channel
        each of its input and output positions carries.

    Raises:
        UnsupportedModelError: for a subclassed or unbuilt model.

    Example:

    ```python
    graph = hos_keras.channel_groups(keras.applications.ResNet50(weights=None))
    for group in graph.prunable:
        print(group.name, group.channels, group.producers)
    ```
    """
    tracer = _Tracer(model)
    tracer.trace()
    slots = tracer.slots
    position = {layer.name: i for i, layer in enumerate(model.layers)}
    tracer.order.sort(key=lambda name: position.get(name.split("/")[0], 0))

    # Producers tied by any shared channel class form one group.
    owner_parent = {name: name for name in tracer.order}

    def find(name):
        while owner_parent[name] != name:
            owner_parent[name] = owner_parent[owner_parent[name]]
            name = owner_parent[name]
        return name

    class_owner: dict[int, str] = {}
    for name in tracer.order:
        for root in slots.roots(tracer.outputs[name]).tolist():
            if root in class_owner:
                a, b = find(class_owner[root]), find(name)
                if a != b:
                    owner_parent[b] = a
            else:
                class_owner[root] = name
    frozen_roots: dict[int, str] = {}
    for slot, reason in slots.reason.items():
        frozen_roots.setdefault(slots.find(slot), reason)

    inputs = {k: slots.roots(v) for k, v in tracer.inputs.items()}
    outputs = {k: slots.roots(v) for k, v in tracer.outputs.items()}
    by_group: dict[str, list[str]] = {}
    for name in tracer.order:
        by_group.setdefault(find(name), []).append(name)
    groups, classes = [], {}
    for producers in by_group.values():
        ordered = list(dict.fromkeys(c for p in producers for c in outputs[p].tolist()))
        group_classes = np.array(ordered, dtype=np.int64)
        reason = next((frozen_roots[c] for c in ordered if c in frozen_roots), "")
        members = list(producers) + [
            layer
            for layer, cls in inputs.items()
            if layer not in producers and np.isin(cls, group_classes).any()
        ]
        name = producers[0]
        groups.append(
            ChannelGroup(name, tuple(producers), len(ordered), tuple(members), reason)
        )
        classes[name] = group_classes
    if warn:
        _warn_unknown(groups)
    reshapes = {k: slots.roots(v) for k, v in tracer.reshapes.items()}
    tensors = {k: slots.roots(v) for k, v in tracer.layer_outputs.items()}
    return ChannelGraph(groups, classes, inputs, outputs, reshapes, tensors)


def _warn_unknown(groups) -> None:
    unknown = sorted({g.frozen for g in groups if "unknown to" in g.frozen})
    for reason in unknown:
        warnings.warn(
            f"hos_keras froze channels because {reason}; those groups are not pruned.",
            stacklevel=3,
        )
