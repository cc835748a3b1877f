"""Surgery: turn a pruning plan into a physically smaller model, or a masked copy.

`slim_model` rebuilds the model from its config with fewer filters/units in the
pruned layers and copies every weight over, sliced along the output axis of the
pruned layers, both axes of per-channel followers (BatchNormalization,
DepthwiseConv) and the input axis of the consumers. `mask_model` returns a copy of
the original architecture in which exactly those slices are zero. The two compute
the same function: that is the invariant the tests check on real architectures.

Neither function modifies the input model.
"""

from __future__ import annotations

import copy

import keras
import numpy as np

from hos_keras import kernels
from hos_keras.errors import PlanMismatchError, UnsupportedModelError
from hos_keras.graph import channel_groups, functional_nodes, get_layer
from hos_keras.plan import PruningPlan

__all__ = ["mask_model", "slim_model", "weight_masks"]

_CONV_T = kernels.CONV_TRANSPOSE_TYPES
_SEPARABLE = kernels.SEPARABLE_TYPES
_DEPTHWISE = kernels.DEPTHWISE_TYPES


def _channel_indices(keep: np.ndarray, multiplier: int) -> np.ndarray:
    """Indices of the outputs c * m + j of the kept input channels c."""
    keep = np.asarray(keep, dtype=np.int64)
    return (keep[:, None] * multiplier + np.arange(multiplier)[None, :]).reshape(-1)


def _slice_specs(model: keras.Model, plan: PruningPlan) -> dict[str, dict]:
    """For each affected layer: the kept input and/or output positions."""
    if not isinstance(plan, PruningPlan):
        raise PlanMismatchError(
            f"Expected a PruningPlan; received {type(plan).__name__}. Make one with "
            "hos_keras.plan_pruning(model, ...)."
        )
    channel_graph = channel_groups(model, warn=False)
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


def _sliced_weights(layer, spec: dict, weights=None) -> list[np.ndarray]:
    """The layer's weights (or `weights` shaped like them) minus the planned channels."""
    if weights is None:
        weights = [np.asarray(w) for w in layer.get_weights()]
    keep_in, keep_out = spec.get("in"), spec.get("out")
    if isinstance(layer, _DEPTHWISE):
        multiplier = layer.depth_multiplier
        kernel = weights[0][..., keep_in, :]
        rest = [w[_channel_indices(keep_in, multiplier)] for w in weights[1:]]
        return [kernel, *rest]
    if isinstance(layer, _SEPARABLE):
        depthwise, pointwise, *bias = weights
        multiplier = layer.depth_multiplier
        if keep_in is not None:
            depthwise = depthwise[..., keep_in, :]
            pointwise = pointwise[..., _channel_indices(keep_in, multiplier), :]
        if keep_out is not None:
            pointwise = pointwise[..., keep_out]
            bias = [b[keep_out] for b in bias]
        return [depthwise, pointwise, *bias]
    if isinstance(layer, kernels.FILTER_LAYER_TYPES):
        kernel, *bias = weights
        in_axis, out_axis = (-1, -2) if isinstance(layer, _CONV_T) else (-2, -1)
        if keep_in is not None:
            # A grouped kernel holds one group's inputs; all groups keep the same.
            keep_in = keep_in[keep_in < kernel.shape[in_axis]]
            kernel = np.take(kernel, keep_in, axis=in_axis)
        if keep_out is not None:
            kernel = np.take(kernel, keep_out, axis=out_axis)
            bias = [b[keep_out] for b in bias]
        return [kernel, *bias]
    # Per-channel layers (BatchNormalization, PReLU): every weight has the channels
    # on its last axis, or a single value shared by all channels.
    return [w if w.shape[-1] == 1 else np.take(w, keep_in, axis=-1) for w in weights]


def _copy_weights(source, target, specs, transform, prefix: str = "") -> None:
    """Copies weights layer by layer; planned layers go through `transform`."""
    for layer in target.layers:
        if not layer.weights:
            continue
        original = source.get_layer(layer.name)
        name = prefix + layer.name
        if isinstance(layer, keras.Model) and any(
            key.startswith(f"{name}/") for key in specs
        ):
            _copy_weights(original, layer, specs, transform, f"{name}/")
        elif name in specs:
            layer.set_weights(transform(original, specs[name]))
        else:
            layer.set_weights(original.get_weights())


def _edit_config(config: dict, prefix: str, widths, changed) -> None:
    """Applies new widths and target shapes to a (nested) model config in place."""
    for layer_config in config["layers"]:
        inner = layer_config["config"]
        name = prefix + inner.get("name", "")
        if isinstance(inner.get("layers"), list):
            _edit_config(inner, f"{name}/", widths, changed)
            continue
        if name in changed:
            # The recorded build shape is the old one; let the call build it.
            layer_config.pop("build_config", None)
        if name in widths:
            key = "units" if "units" in inner else "filters"
            inner[key] = int(widths[name])
        if "channels" in changed.get(name, {}):
            inner["target_shape"] = [
                *inner["target_shape"][:-1],
                changed[name]["channels"],
            ]


def _rebuild(model, widths: dict[str, int], changed) -> keras.Model:
    config = copy.deepcopy(model.get_config())
    _edit_config(config, "", widths, changed)
    cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    return cls.from_config(config)


def slim_model(model: keras.Model, plan: PruningPlan) -> keras.Model:
    """Builds a new, physically smaller model from a pruning plan.

    The new model has the same graph with fewer filters/units in the planned layers;
    its weights are the original ones with the planned channels sliced away (kernels
    on the output and input axes, biases, BatchNormalization gamma/beta/moving
    statistics, depthwise kernels). It is made of plain Keras layers, so it saves and
    loads like any model. The input model is not modified.

    Args:
        model: The functional or Sequential model the plan was made for.
        plan: A `PruningPlan` from `hos_keras.plan_pruning(model, ...)`.

    Returns:
        A new `keras.Model` (Sequential stays Sequential).

    Raises:
        PlanMismatchError: if the plan names layers the model lacks or channel
            counts differ (a plan made for another model).
        UnsupportedModelError: for a subclassed model, or one whose config cannot
            be rebuilt (e.g. an unregistered custom layer).

    Example:

    ```python
    plan = hos_keras.plan_pruning(model, allocation="target", macs_reduction=0.5)
    small = hos_keras.slim_model(model, plan)
    small.save("small.keras")
    ```
    """
    functional_nodes(model)  # raises UnsupportedModelError for subclassed models
    specs = _slice_specs(model, plan)
    widths = {name: len(spec["out"]) for name, spec in specs.items() if "out" in spec}
    try:
        slim = _rebuild(model, widths, specs)
    except (TypeError, ValueError) as error:
        raise UnsupportedModelError(
            f"Could not rebuild model {model.name!r} from its config: {error} If "
            "the model contains custom layers or models, register them with "
            "@keras.saving.register_keras_serializable()."
        ) from error
    _copy_weights(model, slim, specs, _sliced_weights)
    return slim


def _weight_mask(layer, spec: dict) -> list[np.ndarray]:
    """Boolean arrays, one per weight: True where `slim_model` keeps the entry."""
    shapes = [tuple(w.shape) for w in layer.weights]
    # Slicing an array of flat indices the same way tells which entries survive.
    index_weights = [np.arange(int(np.prod(s))).reshape(s) for s in shapes]
    kept = _sliced_weights(layer, spec, index_weights)
    masks = []
    for shape, kept_indices in zip(shapes, kept, strict=True):
        mask = np.zeros(int(np.prod(shape)), dtype=bool)
        mask[kept_indices.reshape(-1)] = True
        masks.append(mask.reshape(shape))
    return masks


def _masked_weights(layer, spec: dict) -> list[np.ndarray]:
    """The layer's weights with exactly the slices `slim_model` removes set to 0."""
    return [
        np.where(mask, np.asarray(w), 0).astype(np.asarray(w).dtype)
        for w, mask in zip(layer.get_weights(), _weight_mask(layer, spec), strict=True)
    ]


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
    specs = _slice_specs(model, plan)
    return {
        name: _weight_mask(get_layer(model, name), spec)
        for name, spec in specs.items()
        if "channels" not in spec
    }


def mask_model(model: keras.Model, plan: PruningPlan) -> keras.Model:
    """Copies the model and zeroes exactly the weight slices `slim_model` removes.

    `slim_model(model, plan)(x)` equals `mask_model(model, plan)(x)` up to float
    rounding: the masked model is the reference the slim model is tested against,
    and the form progressive pruning trains in.

    Args:
        model: The functional or Sequential model the plan was made for.
        plan: A `PruningPlan` for it.

    Returns:
        A new model with the original architecture and masked weights.

    Raises:
        PlanMismatchError: if the plan does not belong to the model.
    """
    functional_nodes(model)
    specs = _slice_specs(model, plan)
    masked = keras.models.clone_model(model)
    _copy_weights(model, masked, specs, _masked_weights)
    return masked
