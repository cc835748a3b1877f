"""Graph analysis: which output channels of a Keras model are pruned together.

This module reads the structure of a Keras 3 model; it does no math and never
changes the model's weights. It walks the functional graph once and asks the table
of layer rules (`hos_keras.layer_rules`) what each call does to the channels:
producers (Conv, Dense, ...) create them, per-channel layers and keras.ops
element-wise operations pass them, DepthwiseConv repeats them, element-wise merges
tie them, Concatenate places them side by side, Flatten spreads them, and anything
the table does not know freezes them, with the reason recorded.

Channels tied together form a `ChannelGroup`, the unit of pruning (the "group" of
Torch-Pruning's DepGraph: Fang et al., "DepGraph: Towards Any Structural Pruning",
CVPR 2023). A frozen group is never pruned, so the model is never corrupted;
channels that reach a model output are frozen too.

Structure the walk goes through:

- nested functional models, including subclasses of `keras.Model` built with the
  functional API (keras-hub backbones and tasks), their layers named
  `"outer/inner"`;
- subclassed layers without a rule whose `call` is made only of layers and
  keras.ops operations (keras-hub's blocks): the walk traces `call` on symbolic
  inputs into a functional *view* of the block, checks on a random input that the
  view computes what the layer computes, and walks the view like a nested model.
  A block that cannot be traced (Python code on values, raw TensorFlow calls,
  weights of its own) or whose view differs is frozen with its name. The choice:
  tracing reaches the channels inside the blocks users actually have, and the
  numerical check means a block is only pruned through when the view is exact;
- blocks whose `call` needs a known sequence length (a decoder's causal mask)
  and that `hos_keras.fixed_blocks` can re-create from their config: traced on
  inputs of batch 1 and length 1 (checked at length 8); surgery re-creates them
  instead of replaying the view (`is_fixed`).

Attention layers are leaves with a rule (`hos_keras.attention`): their heads are
their channels.

Keras exposes the functional graph through `Functional._nodes_by_depth` and the
nodes' `input_tensors` / `output_tensors` / `arguments`; this module is the one
place that reads them.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Iterator

import keras
import numpy as np

from hos_keras import fixed_blocks, layer_rules
from hos_keras.errors import UnsupportedModelError
from hos_keras.text import plural

__all__ = [
    "Call",
    "ChannelGraph",
    "ChannelGroup",
    "channel_groups",
    "ends_with_softmax",
    "functional_nodes",
    "get_layer",
    "inner_graph",
    "io_structure",
    "is_fixed",
    "iter_calls",
    "layer_view",
]

_INPUT_REASON = "channels of a model input"
_OUTPUT_REASON = "its channels reach a model output"


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
        layers: Every layer named in `inputs` and `outputs`, by qualified name.
    """

    groups: list[ChannelGroup]
    classes: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    reshapes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    tensors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    layers: dict[str, object] = dataclasses.field(default_factory=dict)

    def group(self, name: str) -> ChannelGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    @property
    def prunable(self) -> list[ChannelGroup]:
        """The groups that may be pruned."""
        return [g for g in self.groups if g.prunable]

    @property
    def frozen(self) -> dict[str, str]:
        """`{group name: reason}` of the groups that cannot be pruned."""
        return {g.name: g.frozen for g in self.groups if g.frozen}

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


def get_layer(model: keras.Model, name: str):
    """A layer by qualified name: `"outer/inner"` reaches into nested models and
    into the views of traced subclassed layers.

    Raises:
        ValueError: if the model has no such layer.
    """
    layer = _find(model, name, "")
    if layer is None:
        raise ValueError(f"No layer named {name!r} in model {model.name!r}.")
    return layer


def _find(model, name: str, prefix: str):
    for node in functional_nodes(model):
        op = node.operation
        qualified = prefix + op.name
        if qualified == name:
            return op
        if name.startswith(qualified + "/"):
            inner = inner_graph(op, node)
            if inner is not None:
                return _find(inner, name, qualified + "/")
    return None


def functional_nodes(model: keras.Model) -> list:
    """The nodes of a functional or Sequential model, inputs first.

    Raises:
        UnsupportedModelError: for a subclassed or unbuilt model.
    """
    graph = _functional(model)
    depths = sorted(graph._nodes_by_depth, reverse=True)
    return [node for depth in depths for node in graph._nodes_by_depth[depth]]


def io_structure(model: keras.Model):
    """`(inputs, outputs)` of a functional graph, in their nested structures."""
    graph = _functional(model)
    inputs = getattr(graph, "_inputs_struct", None)
    if inputs is None:
        inputs = graph.inputs if len(graph.inputs) > 1 else graph.inputs[0]
    return inputs, graph._outputs_struct


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


def _is_functional(op) -> bool:
    if not isinstance(op, keras.Model):
        return False
    try:
        _functional(op)
    except UnsupportedModelError:
        return False
    return True


# Views of subclassed layers ---------------------------------------------------

_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layer_view(layer, node) -> keras.Model | str:
    """The functional view of a subclassed layer's `call`, or why there is none.

    Args:
        layer: A layer (or subclassed model) without a layer rule.
        node: One node of a call of it, for the input shapes.

    Returns:
        A functional `keras.Model` made of the layer's own sublayers that computes
        what the layer computes (checked on a random input), or a short reason
        why the layer cannot be traced.
    """
    try:
        return _VIEWS[layer]
    except KeyError:
        pass
    except TypeError:
        return "cannot be traced"
    view = _make_view(layer, node)
    _VIEWS[layer] = view
    return view


def _make_view(layer, node):
    if not isinstance(layer, keras.layers.Layer) or not layer._layers:
        return "unknown layer type"
    sub_weights = {
        id(w) for sub in layer._flatten_layers(include_self=False) for w in sub.weights
    }
    if any(id(w) not in sub_weights for w in layer.weights):
        return "a subclassed layer with weights of its own"
    view = _trace(layer, node)
    if isinstance(view, str) and _unknown_dims(node):
        if fixed_blocks.recipe_for(layer) is None:
            return view
        try:
            layer.get_config()
        except Exception as error:  # noqa: BLE001 - the block cannot be re-created
            return (
                "a block traceable only at a fixed length, whose get_config fails "
                f"({type(error).__name__}: {error})"
            )
        view = _fixed_view(layer, node)
        if isinstance(view, keras.Model):
            _FIXED[layer] = True
        return view
    if isinstance(view, str):
        return view
    if not _same_outputs(layer, view, node):
        return "a subclassed layer whose traced graph differs from its call"
    return view


def _trace(layer, node, length: int | None = None):
    """The functional view of `layer.call` on new inputs shaped like the call's,
    or why it fails. With `length`, the inputs have batch 1 and every unknown
    dimension is `length`."""
    originals = node.input_tensors
    inputs = []
    for t in originals:
        shape = tuple(t.shape[1:])
        if length is None:
            inputs.append(keras.Input(shape=shape, dtype=t.dtype))
            continue
        shape = tuple(length if d is None else d for d in shape)
        inputs.append(keras.Input(shape=shape, dtype=t.dtype, batch_size=1))
    mapping = {id(t): x for t, x in zip(originals, inputs, strict=True)}
    try:
        args, kwargs = node.arguments.fill_in(mapping)
        with warnings.catch_warnings():
            # A softmax over one position (length 1) warns; that is the point.
            warnings.simplefilter("ignore", UserWarning)
            outputs = layer.call(*args, **kwargs)
            view = keras.Model(
                inputs if len(inputs) > 1 else inputs[0], outputs, name=layer.name
            )
    except Exception as error:  # noqa: BLE001 - any failure means "not traceable"
        return (
            f"a subclassed layer whose call cannot be traced ({type(error).__name__})"
        )
    for inner in functional_nodes(view):
        for value in keras.tree.flatten((inner.arguments.args, inner.arguments.kwargs)):
            if isinstance(value, keras.Variable):
                return "a subclassed layer that uses a variable directly"
    return view


def _unknown_dims(node) -> bool:
    return any(d is None for t in node.input_tensors for d in t.shape[1:])


# Layers whose view was traced at a fixed length (see hos_keras.fixed_blocks).
_FIXED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# The length a fixed view is traced at (one position, as profile counts unknown
# dimensions) and the length it is checked at.
_TRACE_LENGTH, _CHECK_LENGTH = 1, 8


def _fixed_view(layer, node):
    """The view of a block traced at length 1, checked at length 8."""
    view = _trace(layer, node, _TRACE_LENGTH)
    if isinstance(view, str):
        return f"{view}, even at a fixed length"
    check = _trace(layer, node, _CHECK_LENGTH)
    if isinstance(check, str) or not all(
        _same_outputs(layer, v, node, length)
        for v, length in ((view, _TRACE_LENGTH), (check, _CHECK_LENGTH))
    ):
        return "a subclassed layer whose fixed-length graph differs from its call"
    return view


def is_fixed(layer) -> bool:
    """Whether `layer`'s view was traced at a fixed length: surgery re-creates
    such a block from its config instead of replaying the view."""
    try:
        return layer in _FIXED
    except TypeError:
        return False


def _same_outputs(layer, view, node, length: int = 8) -> bool:
    """Whether the view computes the layer's outputs on a random input (inference).

    Unknown dimensions of the input are set to `length` for the probe.
    """
    rng = np.random.default_rng(0)
    probes = []
    for t in node.input_tensors:
        shape = [1] + [length if d is None else int(d) for d in t.shape[1:]]
        probes.append(
            rng.normal(size=shape).astype(keras.backend.standardize_dtype(t.dtype))
        )
    mapping = {id(t): p for t, p in zip(node.input_tensors, probes, strict=True)}
    try:
        args, kwargs = node.arguments.fill_in(mapping)
        kwargs = {k: v for k, v in kwargs.items() if k != "training"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            expected = layer(*args, **kwargs, training=False)
            got = view(probes if len(probes) > 1 else probes[0], training=False)
    except Exception:  # noqa: BLE001
        return False
    expected, got = keras.tree.flatten(expected), keras.tree.flatten(got)
    if len(expected) != len(got):
        return False
    for a, b in zip(expected, got, strict=True):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        if a.shape != b.shape:
            return False
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        if not np.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0)):
            return False
    return True


def inner_graph(op, node):
    """The graph to walk inside a call: a nested functional model or a view.

    Args:
        op: The layer or operation called.
        node: The node of the call (for a view's input shapes).

    Returns:
        The nested functional model itself, the functional view of a traceable
        subclassed layer, or `None` for a leaf layer or operation.
    """
    if _is_functional(op):
        return op
    if layer_rules.get_rule(op) is not None or not isinstance(op, keras.layers.Layer):
        return None
    view = layer_view(op, node)
    return view if isinstance(view, keras.Model) else None


# Calls ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a leaf layer or operation, with its qualified name."""

    name: str
    operation: object
    node: object
    rule: layer_rules.LayerRule | None


def iter_calls(model: keras.Model, prefix: str = "") -> Iterator[Call]:
    """Every call of a leaf layer or operation, nested graphs walked through.

    Nested functional models and the views of traceable subclassed layers are
    expanded (their calls named `"outer/inner"`); input nodes are skipped.

    Raises:
        UnsupportedModelError: for a subclassed or unbuilt model.
    """
    for node in functional_nodes(model):
        op = node.operation
        if node.is_input or isinstance(op, keras.layers.InputLayer):
            continue
        inner = inner_graph(op, node)
        if inner is not None:
            yield from iter_calls(inner, f"{prefix}{op.name}/")
            continue
        yield Call(prefix + op.name, op, node, layer_rules.get_rule(op))


# The channel analysis ----------------------------------------------------------


class _Slots:
    """Union-find over channel slots, with the freeze reason of each."""

    def __init__(self):
        self.parent: list[int] = []
        self.reason: dict[int, str] = {}

    def new(self, count: int, reason: str = ""):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
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


def _where(name: str, op) -> str:
    return f"{name!r} ({type(op).__name__})"


class _Tracer(layer_rules.TraceContext):
    """Walks the graph once, assigning channel slots to every tensor."""

    def __init__(self, model, hidden_width: bool = False):
        self.hidden_width = hidden_width
        self.slots = _Slots()
        self.tensors: dict[int, tuple[np.ndarray, int]] = {}
        self.in_table: dict[str, np.ndarray] = {}
        self.out_table: dict[str, np.ndarray] = {}
        self.reshapes: dict[str, np.ndarray] = {}
        self.layer_outputs: dict[str, np.ndarray] = {}
        self.layers: dict[str, object] = {}
        self.order: list[str] = []
        self.model = model
        self.prefix = ""
        self.calls: dict[int, int] = {}
        self.model_outputs = {id(t) for t in _functional(model).outputs}

    # TraceContext ----------------------------------------------------------
    def output(self, slots, axis, index=0):
        self.tensors[id(self.node.output_tensors[index])] = (
            np.asarray(slots, dtype=np.int64),
            axis,
        )

    def create(self, count, groups=1):
        if self.name in self.out_table:
            return self.out_table[self.name]
        slots = np.tile(self.slots.new(count // groups), groups)
        self.out_table[self.name] = slots
        self.layers[self.name] = self.layer
        self.order.append(self.name)
        return slots

    def fresh(self, count, reason="reads another axis"):
        return self.slots.new(count, reason=self._reason(reason))

    def reads(self, slots):
        name = self.name
        if name in self.in_table:
            previous = self.in_table[name]
            if len(previous) != len(slots):
                self.slots.freeze(slots, self._reason("shared with other widths"))
                self.slots.freeze(previous, self._reason("shared with other widths"))
                return
            self.slots.union(previous, slots)
        else:
            self.in_table[name] = np.asarray(slots, dtype=np.int64)
            self.layers[name] = self.layer

    def tie(self, a, b):
        self.slots.union(a, b)

    def freeze_slots(self, slots, reason):
        self.slots.freeze(slots, self._reason(reason))

    def freeze(self, reason):
        if self.node.output_tensors and all(
            id(t) in self.model_outputs for t in self.node.output_tensors
        ):
            # Whatever the call does, its channels reach a model output.
            reason = _OUTPUT_REASON
        else:
            reason = self._reason(reason)
        for slots, _ in self.inputs:
            self.slots.freeze(slots, reason)
        for tensor in self.node.output_tensors:
            self._opaque(tensor, reason)

    def reshaped(self, slots):
        self.reshapes[self.name] = np.asarray(slots, dtype=np.int64)

    def _reason(self, reason: str) -> str:
        return f"{reason}: {_where(self.name, self.layer)}"

    # Helpers -----------------------------------------------------------------
    def _opaque(self, tensor, reason: str) -> None:
        """Channels from outside the analysis: new slots, frozen."""
        shape = tensor.shape
        rank = len(shape)
        count = int(shape[-1]) if rank >= 2 and shape[-1] is not None else 0
        self.tensors[id(tensor)] = (self.slots.new(count, reason=reason), rank - 1)

    # The walk ------------------------------------------------------------------
    def trace(self) -> None:
        self._walk(self.model)
        for tensor in _functional(self.model).outputs:
            slots, _ = self.tensors[id(tensor)]
            for slot in slots.tolist():
                self.slots.reason[slot] = _OUTPUT_REASON

    def _walk(self, model) -> None:
        nodes = functional_nodes(model)
        for node in nodes:
            key = id(node.operation)
            self.calls[key] = self.calls.get(key, 0) + 1
        for node in nodes:
            op = node.operation
            if isinstance(op, keras.layers.InputLayer) or node.is_input:
                for tensor in node.output_tensors:
                    if id(tensor) not in self.tensors:
                        self._opaque(tensor, _INPUT_REASON)
                continue
            for tensor in node.input_tensors:
                if id(tensor) not in self.tensors:
                    self._opaque(tensor, "channels from outside the graph")
            self._visit(node, op)
            first = node.output_tensors[0] if node.output_tensors else None
            if first is not None and id(first) in self.tensors:
                self.layer_outputs[self.prefix + op.name] = self.tensors[id(first)][0]

    def _enter(self, node, op):
        self.node, self.layer, self.name = node, op, self.prefix + op.name
        self.inputs = [self.tensors[id(t)] for t in node.input_tensors]

    def _visit(self, node, op) -> None:
        self._enter(node, op)
        inner = inner_graph(op, node)
        if inner is not None:
            self._nested(node, op, inner)
            return
        if not node.input_tensors:
            self.freeze("makes channels from no input")
            return
        rule = layer_rules.get_rule(op)
        if rule is None:
            if isinstance(op, keras.Model):
                self.freeze("a subclassed model")
            elif isinstance(op, keras.layers.Layer):
                # inner_graph found no view: layer_view gives the reason.
                self.freeze(layer_view(op, node))
            else:
                self.freeze("unknown operation")
            return
        rule.trace(self)

    def _nested(self, node, op, inner) -> None:
        """Traces a nested graph (model or view), its layers named `outer/inner`."""
        if self.calls.get(id(op), 0) > 1 or len(inner.inputs) != len(
            node.input_tensors
        ):
            self.freeze("a nested model used twice")
            return
        for outer, inner_input in zip(node.input_tensors, inner.inputs, strict=True):
            self.tensors[id(inner_input)] = self.tensors[id(outer)]
        saved = self.prefix
        self.prefix = f"{saved}{op.name}/"
        self._walk(inner)
        if is_fixed(op):
            self._freeze_uncovered(op)
        self.prefix = saved
        for outer, inner_output in zip(node.output_tensors, inner.outputs, strict=True):
            self.tensors[id(outer)] = self.tensors[id(inner_output)]

    def _freeze_uncovered(self, block) -> None:
        """In a block re-created from its config, the widths its recipe does not
        cover are frozen: the config could not give them."""
        covered = {id(sub) for sub in fixed_blocks.recipe_for(block).sublayers(block)}
        reason = (
            f"a width the config of {type(block).__name__} cannot express: "
            f"{_where(self.prefix.rstrip('/'), block)}"
        )
        for name in self.order:
            if name.startswith(self.prefix) and id(self.layers[name]) not in covered:
                self.slots.freeze(self.out_table[name], reason)


def channel_groups(
    model: keras.Model, warn: bool = True, hidden_width: bool = False
) -> ChannelGraph:
    """Finds the groups of channels that must be pruned together.

    Args:
        model: A built functional or Sequential Keras model (not modified).
        warn: Issue one warning that lists the groups frozen by layers or
            operations the analysis cannot prune through, by reason. Defaults to
            `True`.
        hidden_width: Let a transformer's hidden width (the residual stream) be
            pruned: token, position and patch embeddings make its channels,
            LayerNormalization and RMSNormalization pass them (their scale and
            bias sliced), self-attention layers read and write them, a tied
            reversible embedding's logits read them. Pruning them is not exact
            (a normalisation's statistics change; see
            `hos_keras.plan_pruning`). Defaults to `False`, which freezes them.

    Returns:
        A `ChannelGraph`: every group (prunable or frozen, with the reason) and,
        for every layer whose weights are indexed by channel, which group channel
        each of its input and output positions carries. The graph is traced once
        per model (and table of layer rules) and shared by every later call -
        planning, slimming, masking, distilling and the tuner all read the same
        one -, so treat it as read-only.

    Raises:
        UnsupportedModelError: for a subclassed or unbuilt model.

    Example:

    ```python
    graph = hos_keras.channel_groups(keras.applications.ResNet50(weights=None))
    for group in graph.prunable:
        print(group.name, group.channels, group.producers)
    ```
    """
    rules = layer_rules.table_key()
    hidden_width = bool(hidden_width)
    cached = (_HIDDEN_GRAPHS if hidden_width else _GRAPHS).get(model)
    if cached is None or cached[0] != (rules, hidden_width):
        traced = (
            _trace_groups(model, hidden_width=True)
            if hidden_width
            else _trace_groups(model)
        )
        cached = ((rules, hidden_width), traced)
        if hidden_width:
            _HIDDEN_GRAPHS[model] = cached
        else:
            _GRAPHS[model] = cached
    if warn:
        warn_frozen(cached[1].groups)
    return cached[1]


# model -> ((the layer rules' table key, hidden_width), its ChannelGraph); the
# graphs with the hidden width pruned are kept apart.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HIDDEN_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _trace_groups(model: keras.Model, hidden_width: bool = False) -> ChannelGraph:
    """`channel_groups` without the cache and the warning."""
    tracer = _Tracer(model, hidden_width)
    tracer.trace()
    slots = tracer.slots
    # Groups are named after their first producer in the model's layer order.
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
        for root in slots.roots(tracer.out_table[name]).tolist():
            if root in class_owner:
                a, b = find(class_owner[root]), find(name)
                if a != b:
                    owner_parent[b] = a
            else:
                class_owner[root] = name
    frozen_roots: dict[int, str] = {}
    for slot, reason in slots.reason.items():
        # Reaching a model output is the reason that holds whatever else does.
        root = slots.find(slot)
        if root not in frozen_roots or reason == _OUTPUT_REASON:
            frozen_roots[root] = reason

    inputs = {k: slots.roots(v) for k, v in tracer.in_table.items()}
    outputs = {k: slots.roots(v) for k, v in tracer.out_table.items()}
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
    reshapes = {k: slots.roots(v) for k, v in tracer.reshapes.items()}
    tensors = {k: slots.roots(v) for k, v in tracer.layer_outputs.items()}
    return ChannelGraph(
        groups, classes, inputs, outputs, reshapes, tensors, dict(tracer.layers)
    )


def frozen_by_reason(groups) -> dict[str, list[str]]:
    """`{reason: [where, ...]}` of frozen groups, model inputs and outputs left out.

    Reasons are written `"what: where"`; the groups frozen for the same `what` are
    gathered, each `where` (the layer or operation named with its type) once.
    """
    gathered: dict[str, list[str]] = {}
    for group in groups:
        if not group.frozen:
            continue
        what, _, where = group.frozen.partition(": ")
        if what in (_INPUT_REASON, _OUTPUT_REASON):
            continue
        places = gathered.setdefault(what, [])
        if where not in places:
            places.append(where)
    return gathered


def warn_frozen(groups, stacklevel: int = 3) -> None:
    """One warning listing what froze channel groups, by reason.

    A transformer's hidden width, whole unless `hidden_width=True` is asked for,
    is left out: that is a default, not a layer hos_keras cannot prune through.
    """
    gathered = {
        what: places
        for what, places in frozen_by_reason(groups).items()
        if "the hidden width" not in what
    }
    if not gathered:
        return
    count = sum(
        1 for g in groups if g.frozen and g.frozen.partition(": ")[0] in gathered
    )
    lines = []
    for what, places in gathered.items():
        shown = ", ".join(places[:6]) + (
            f" and {len(places) - 6} more" if len(places) > 6 else ""
        )
        lines.append(f"  - {what}: {shown}")
    warnings.warn(
        f"hos_keras does not prune {plural(count, 'channel group')} that reach layers or "
        "operations it cannot prune through:\n"
        + "\n".join(lines)
        + "\nplan.frozen lists every frozen group. To prune through a layer of your "
        "own, describe it with hos_keras.register_layer_rule.",
        stacklevel=stacklevel,
    )


def ends_with_softmax(model: keras.Model) -> bool:
    """Whether the model's (first) output is already a softmax."""
    output = model.outputs[0]
    producers = [
        node.operation
        for node in functional_nodes(model)
        if any(t is output for t in node.output_tensors)
    ]
    if not producers:
        return False
    layer = producers[0]
    if isinstance(layer, keras.layers.Softmax):
        return True
    return getattr(layer, "activation", None) is keras.activations.softmax
