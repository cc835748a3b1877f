"""Surgery: turn a pruning plan into a physically smaller model, or a masked copy.

Both functions replay the model's graph node by node into a NEW plain functional
model: every layer is re-created from its config (with fewer filters/units where the
plan prunes, as the table of layer rules says) and called on the new tensors, then
receives the original weights, sliced (`slim_model`) or with the removed slices set
to zero (`mask_model`). Nested functional models, subclasses of `keras.Model` built
with the functional API (keras-hub backbones and tasks) and traced subclassed layers
(see `hos_keras.graph`) are replayed the same way, as nested plain functional
models; a nested model whose input channels are pruned gets new, narrower inputs.
The subclass types are therefore not kept, and the result saves to `.keras` and
loads with `keras.models.load_model` (plus any custom layer classes the original
already needed). A Sequential model stays Sequential. Two exceptions: a block
traced at a fixed length (a keras-hub decoder block, see
`hos_keras.fixed_blocks`) is re-created as its own class from its config with the
pruned widths; and a layer the plan leaves untouched whose own config cannot
re-create it is carried over (see `hos_keras.carried`).

The slim and masked models compute the same function: that is the invariant the
tests check on real architectures. Neither function modifies the input model.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np

from hos_keras import carried, fixed_blocks, graph, hub_models, layer_rules
from hos_keras.errors import PlanMismatchError, UnsupportedModelError
from hos_keras.plan_record import PruningPlan

__all__ = ["mask_model", "slim_model", "weight_masks"]


def _slice_specs(model: keras.Model, plan: PruningPlan, channel_graph=None) -> dict:
    """For each affected layer: the kept input and/or output positions."""
    if not isinstance(plan, PruningPlan):
        raise PlanMismatchError(
            f"Expected a PruningPlan; received {type(plan).__name__}. Make one with "
            "hos_keras.plan_pruning(model, ...)."
        )
    if channel_graph is None:
        channel_graph = _plan_graph(model, plan)
    groups = {g.name: g for g in channel_graph.prunable}
    for entry in plan.groups.values():
        group = groups.get(entry.name)
        if group is None or group.producers != entry.producers:
            raise PlanMismatchError(
                f"The plan (made for model {plan.model_name!r}) has a channel group "
                f"{entry.name!r} with producers {list(entry.producers)} that model "
                f"{model.name!r} does not have; make the plan for this model."
            )
        if group.channels != entry.channels or (
            len(entry.keep) and int(np.max(entry.keep)) >= group.channels
        ):
            raise PlanMismatchError(
                f"Channel group {entry.name!r} has {group.channels} channels in "
                f"model {model.name!r} but the plan expects {entry.channels}; the "
                "plan belongs to another model."
            )
    removed = channel_graph.removed_classes(
        {entry.name: entry.keep for entry in plan.groups.values()}
    )
    in_keep, out_keep = channel_graph.kept_positions(removed)
    specs: dict[str, dict] = {}
    for name, classes in channel_graph.reshapes.items():
        count = int(np.count_nonzero(~np.isin(classes, removed)))
        if count != len(classes):
            specs[name] = {"channels": count}
    for name, keep in in_keep.items():
        specs.setdefault(name, {})["in"] = keep
    for name, keep in out_keep.items():
        specs.setdefault(name, {})["out"] = keep
    return specs


def _plan_graph(model: keras.Model, plan) -> graph.ChannelGraph:
    """The channel graph a plan was made on: with the hidden width prunable
    when the plan prunes it (`plan.details["hidden_width"]`)."""
    details = getattr(plan, "details", None) or {}
    return graph.channel_groups(
        model, warn=False, hidden_width="hidden_width" in details
    )


def _sliced_weights(layer, spec: dict, weights=None) -> list:
    """The layer's weights (or `weights` shaped like them) minus the planned channels."""
    if weights is None:
        weights = [np.asarray(w) for w in layer.get_weights()]
    rule = layer_rules.get_rule(layer)
    if rule is None:
        return list(weights)
    return rule.slice_weights(layer, weights, spec.get("in"), spec.get("out"))


def _weight_mask(layer, spec: dict) -> list[np.ndarray]:
    """Boolean arrays, one per weight: True where `slim_model` keeps the entry."""
    shapes = [tuple(w.shape) for w in layer.weights]
    # Slicing an array of flat indices the same way tells which entries survive.
    index_weights = [np.arange(int(np.prod(s))).reshape(s) for s in shapes]
    kept = _sliced_weights(layer, spec, index_weights)
    masks = []
    for shape, kept_indices in zip(shapes, kept, strict=True):
        mask = np.zeros(int(np.prod(shape)), dtype=bool)
        mask[np.asarray(kept_indices).reshape(-1)] = True
        masks.append(mask.reshape(shape))
    return masks


def _masked_weights(layer, spec: dict) -> list[np.ndarray]:
    """The layer's weights with exactly the slices `slim_model` removes set to 0."""
    return [
        np.where(mask, np.asarray(w), 0).astype(np.asarray(w).dtype)
        for w, mask in zip(layer.get_weights(), _weight_mask(layer, spec), strict=True)
    ]


class _Replay:
    """Rebuilds a model call by call; `slim` decides whether widths change."""

    def __init__(self, specs: dict, slim: bool):
        self.specs = specs
        self.slim = slim
        self.clones: dict[int, object] = {}
        # Clones whose weights are set (replayed nested graphs: layer by layer).
        self.done: set[int] = set()
        # Traced subclassed layers, replayed from their functional views.
        self.views: set[int] = set()
        # Blocks re-created from their config: clone id -> the original's view.
        self.blocks: dict[int, keras.Model] = {}

    def model(self, model, prefix: str, inputs=None) -> keras.Model:
        """A plain functional (or Sequential) copy of a functional graph.

        Args:
            model: A functional model or a view of a traced layer.
            prefix: Qualified-name prefix of its layers.
            inputs: The new tensors the copy will be called on (nested graphs), to
                size its inputs; `None` for the top-level model.
        """
        input_struct, output_struct = graph.io_structure(model)
        originals = keras.tree.flatten(input_struct)
        new_inputs = []
        for k, original in enumerate(originals):
            shape = tuple(original.shape[1:])
            if inputs is not None:
                shape = tuple(inputs[k].shape[1:])
            new_inputs.append(
                keras.Input(
                    shape=shape, dtype=original.dtype, name=_input_name(original)
                )
            )
        tensors = {id(t): x for t, x in zip(originals, new_inputs, strict=True)}
        layers_in_order = []
        for node in graph.functional_nodes(model):
            op = node.operation
            if node.is_input or isinstance(op, keras.layers.InputLayer):
                continue
            name = prefix + op.name
            args, kwargs = node.arguments.fill_in(tensors)
            flat = [
                t
                for t in keras.tree.flatten((args, kwargs))
                if isinstance(t, keras.KerasTensor)
            ]
            new_op = self._clone(op, node, name, flat)
            if id(op) in self.views:
                # A traced layer's view takes its input tensors as one flat list.
                outputs = new_op(flat if len(flat) > 1 else flat[0])
            else:
                outputs = new_op(*args, **kwargs)
            self._set_weights(op, new_op, name)
            for old, new in zip(
                node.output_tensors, keras.tree.flatten(outputs), strict=True
            ):
                tensors[id(old)] = new
            if new_op not in layers_in_order:
                layers_in_order.append(new_op)
        outputs = keras.tree.map_structure(lambda t: tensors[id(t)], output_struct)
        if isinstance(model, keras.Sequential):
            return keras.Sequential([new_inputs[0], *layers_in_order], name=model.name)
        inputs = keras.tree.map_structure(lambda t: tensors[id(t)], input_struct)
        return keras.Model(inputs, outputs, name=model.name)

    def _clone(self, op, node, name, new_inputs):
        key = id(op)
        if key in self.clones:
            return self.clones[key]
        inner = graph.inner_graph(op, node)
        if inner is not None and graph.is_fixed(op):
            clone = self._block(op, inner, name)
        elif inner is not None:
            clone = self.model(inner, f"{name}/", new_inputs)
            self.done.add(id(clone))
            if inner is not op:
                self.views.add(id(op))
        else:
            config = _config(op)
            spec = self.specs.get(name)
            rule = layer_rules.get_rule(op)
            if self.slim and spec and rule is not None:
                config = rule.configure(
                    config, spec.get("in"), spec.get("out"), spec.get("channels")
                )
            # Carried over when its own get_config cannot re-create it, or lists
            # more than its constructor takes (keras-hub's
            # ViTPatchingAndEmbedding).
            clone = carried.carry_over(op, config, name)
        self.clones[key] = clone
        return clone

    def _block(self, op, view, name):
        """A block traced at a fixed length (see `hos_keras.fixed_blocks`),
        re-created from its config with its sublayers' pruned widths."""
        config = _config(op)
        if self.slim:
            kept = {
                id(call.operation): len(self.specs[call.name]["out"])
                for call in graph.iter_calls(view, f"{name}/")
                if "out" in self.specs.get(call.name, {})
            }
            config = fixed_blocks.recipe_for(op).configure(op, config, kept)
        clone = carried.carry_over(op, config, name)
        self.blocks[id(clone)] = view
        return clone

    def _leaf_values(self, op, name) -> list:
        """A leaf layer's weights, sliced or masked as the plan says."""
        spec = self.specs.get(name)
        if spec is None:
            return op.get_weights()
        if self.slim:
            return _sliced_weights(op, spec)
        return _masked_weights(op, spec)

    def _set_weights(self, op, new_op, name) -> None:
        """Gives a re-created leaf layer its (sliced or masked) weights, once."""
        if id(new_op) in self.done:
            return
        self.done.add(id(new_op))
        if not isinstance(op, keras.layers.Layer) or not op.weights:
            return
        view = self.blocks.get(id(new_op))
        if view is None:
            new_op.set_weights(self._leaf_values(op, name))
            return
        # A re-created block: each of its weights from the sublayer that has it.
        values = {}
        for call in graph.iter_calls(view, f"{name}/"):
            sub = call.operation
            if isinstance(sub, keras.layers.Layer) and sub.weights:
                arrays = self._leaf_values(sub, call.name)
                values.update(zip(map(id, sub.weights), arrays, strict=True))
        new_op.set_weights([values[id(w)] for w in op.weights])


def _config(op) -> dict:
    """The op's config; what its constructor's arguments were when it cannot
    give one.

    Some layers are made with arguments Keras cannot serialise (a
    `keras.layers.Identity` given a DTypePolicy object; keras-hub's
    RMSNormalization as loading re-creates it) and raise from `get_config`. Their
    config is then rebuilt from the base arguments (name, trainability, dtype
    policy) and, for every other constructor argument, the attribute of the same
    name holding a plain value (`epsilon`); an argument with no such attribute
    keeps its default.
    """
    try:
        return op.get_config()
    except NotImplementedError:
        if not isinstance(op, keras.layers.Layer):
            raise
    config = {
        "name": op.name,
        "trainable": op.trainable,
        "dtype": keras.saving.serialize_keras_object(op.dtype_policy),
    }
    plain = (bool, int, float, str, type(None))
    for name in inspect.signature(type(op).__init__).parameters:
        value = getattr(op, name, None)
        if name not in config and name != "self" and isinstance(value, plain):
            config[name] = value
    return config


def _input_name(tensor) -> str | None:
    """The name of the InputLayer that made a model input, to keep it."""
    layer = getattr(getattr(tensor, "_keras_history", None), "operation", None)
    return layer.name if isinstance(layer, keras.layers.InputLayer) else None


def _replay(model: keras.Model, specs: dict, slim: bool) -> keras.Model:
    return _rebuild(_Replay(specs, slim), model)


def _rebuild(replay: _Replay, model: keras.Model, name: str = "") -> keras.Model:
    """`model` replayed by `replay`; a layer that cannot be re-created raises
    UnsupportedModelError naming the model (`name`, else `model.name`)."""
    try:
        return replay.model(model, "")
    except UnsupportedModelError:
        raise
    except (TypeError, ValueError) as error:
        raise UnsupportedModelError(
            f"Could not rebuild model {name or model.name!r}: {type(error).__name__}: "
            f"{error} If the model contains custom layers, register them with "
            "@keras.saving.register_keras_serializable()."
        ) from error


def slim_model(model: keras.Model, plan: PruningPlan) -> keras.Model:
    """Builds a new, physically smaller model from a pruning plan.

    The new model has the same graph with fewer filters/units in the planned layers;
    its weights are the original ones with the planned channels sliced away (kernels
    on the output and input axes, biases, BatchNormalization gamma/beta/moving
    statistics, depthwise kernels, and the weights of registered per-channel
    layers). It is a plain functional model (a Sequential one stays Sequential):
    subclasses of `keras.Model` and traced subclassed layers become nested plain
    functional models of their layers, so their Python types are not kept. The
    exception is a keras-hub backbone, or a task such as a `CausalLM` built on
    one, whose plan keeps the same widths in every block and prunes only widths
    its config holds (see `hos_keras.uniform_plan`): it comes back in its own
    class, so `generate()` and presets still work. It saves and loads like any
    model. The input model is not modified.

    Args:
        model: The functional or Sequential model the plan was made for.
        plan: A `PruningPlan` from `hos_keras.plan_pruning(model, ...)`.

    Returns:
        A new `keras.Model`.

    Raises:
        PlanMismatchError: if the plan names layers the model lacks or channel
            counts differ (a plan made for another model).
        UnsupportedModelError: for a subclassed model, or one whose layers cannot
            be re-created from their config (e.g. an unregistered custom layer).

    Example:

    ```python
    plan = hos_keras.plan_pruning(model, allocation="target", macs_reduction=0.5)
    small = hos_keras.slim_model(model, plan)
    small.save("small.keras")
    ```
    """
    graph.functional_nodes(model)  # raises UnsupportedModelError for subclassed
    slim = _replay(model, _slice_specs(model, plan), slim=True)
    in_class = hub_models.rebuild_in_class(model, plan, slim)
    return slim if in_class is None else in_class


def weight_masks(model: keras.Model, plan: PruningPlan) -> dict[str, list[np.ndarray]]:
    """Which weight entries survive the plan, for every layer it touches.

    Args:
        model: The model the plan was made for.
        plan: A `PruningPlan`.

    Returns:
        `{layer_name: [bool array per weight of layer.weights]}` (True = kept);
        nested layers are named `"outer/inner"`.

    Raises:
        PlanMismatchError: if the plan does not belong to the model.
    """
    channel_graph = _plan_graph(model, plan)
    specs = _slice_specs(model, plan, channel_graph)
    return {
        name: _weight_mask(channel_graph.layers[name], spec)
        for name, spec in specs.items()
        if "channels" not in spec
    }


def mask_model(model: keras.Model, plan: PruningPlan) -> keras.Model:
    """Copies the model and zeroes exactly the weight slices `slim_model` removes.

    `slim_model(model, plan)(x)` equals `mask_model(model, plan)(x)` up to float
    rounding: the masked model is the reference the slim model is tested against,
    and the form progressive pruning trains in. The exception is a plan that
    prunes the hidden width (`plan_pruning(..., hidden_width=True)`): the masked
    model zeroes the removed channels of the residual stream (embedding columns,
    normalisation scales and biases, output-projection columns) and the input
    rows that read them, but its normalisations still average over the full
    width, zeros included, so the slim model differs from it by the error
    recorded in `plan.details["hidden_width"]`. Like `slim_model`, it is a plain
    functional (or Sequential) replay of the graph.

    Args:
        model: The functional or Sequential model the plan was made for.
        plan: A `PruningPlan` for it.

    Returns:
        A new model with the original widths and masked weights.

    Raises:
        PlanMismatchError: if the plan does not belong to the model.
    """
    graph.functional_nodes(model)
    return _replay(model, _slice_specs(model, plan), slim=False)
