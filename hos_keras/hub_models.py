"""Uniform transformer plans, and keras-hub models rebuilt in their own class.

`slim_model` returns a plain functional model: each block keeps its own pruned
widths, which no keras-hub config can express. A decoder LLM used for
generation needs its class back (`CausalLM.generate()` runs the backbone's
blocks with a key/value cache, outside the functional graph), and a keras-hub
backbone's config holds one width per kind for all of its blocks
(`num_query_heads`, `num_key_value_heads`, `intermediate_dim`).

`uniform_plan` turns any plan into one that keeps the same number of heads and
MLP units in every transformer block of the same shape (the mean of what the
plan kept; which channels stay is still chosen per block, by their scores).
`slim_model` then calls `rebuild_in_class`: for a keras-hub backbone, or a
keras-hub task built on one, whose pruned widths all lie in blocks that
`hos_keras.fixed_blocks` re-creates from their config, it re-creates the
backbone from its config with the new widths, the task around it, and loads the
sliced weights, so the result is a `GemmaCausalLM` that generates, saves and
loads as one.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import keras
import numpy as np

from hos_keras import blocks as blocks_lib
from hos_keras import cost_model, fixed_blocks
from hos_keras import graph as graph_lib
from hos_keras.plan_record import GroupPlan, PruningPlan

__all__ = ["rebuild_in_class", "uniform_plan"]


def _kept(entry: GroupPlan, count: int) -> np.ndarray:
    """The `count` best-scoring channels of a group (ties: lower index removed)."""
    order = np.argsort(entry.scores, kind="stable")
    return np.sort(order[entry.channels - count :]).astype(np.int64)


def uniform_plan(model: keras.Model, plan: PruningPlan) -> PruningPlan:
    """A copy of a plan that keeps the same widths in every transformer block.

    Blocks are compared by shape: blocks with the same attention layers (units
    and query heads per unit) and MLP groups (channels) form one set, and within
    a set every role (the k-th attention layer, the j-th MLP group) keeps the
    same count, the mean of the counts `plan` keeps, rounded. Which channels a
    block keeps is chosen from that block's own scores, so data- and
    weight-driven criteria still decide per block. Groups outside blocks, and
    roles the plan leaves whole (frozen, or out of scope) in any block of the
    set, are left as they are. Costs are recounted; `details["uniform"]` is set.

    With equal blocks the MACs are linear in each role's count, so a target the
    plan met stays met up to the rounding of one count per role.

    Args:
        model: The model the plan was made for.
        plan: A `PruningPlan` for it.

    Returns:
        A new `PruningPlan`.

    Example:

    ```python
    plan = hos_keras.plan_pruning(lm, criterion="l1", allocation="global",
                                  fraction=0.3)
    small = hos_keras.slim_model(lm, hos_keras.uniform_plan(lm, plan))
    small.generate(prompts, max_length=32)   # still a CausalLM
    ```
    """
    channel_graph = graph_lib.channel_groups(model, warn=False)
    shapes: dict[tuple, list[blocks_lib.TransformerBlock]] = {}
    for block in blocks_lib.transformer_blocks(model, channel_graph):
        shape = (
            block.units,
            block.heads_per_unit,
            tuple(channel_graph.group(g).channels for g in block.mlp),
        )
        shapes.setdefault(shape, []).append(block)
    groups = dict(plan.groups)
    for same in shapes.values():
        for role in zip(*(block.groups for block in same), strict=True):
            if not all(name in groups for name in role):
                continue
            counts = [len(groups[name].keep) for name in role]
            count = max(1, math.floor(float(np.mean(counts)) + 0.5))
            for name in role:
                entry = groups[name]
                groups[name] = dataclasses.replace(
                    entry,
                    keep=_kept(entry, count),
                    ratio=1.0 - count / entry.channels,
                )
    after = cost_model.CostCounter(model, channel_graph).cost(
        {name: entry.keep for name, entry in groups.items()}
    )
    return dataclasses.replace(
        plan,
        groups=groups,
        params_after=after["params"],
        macs_after=after["macs"],
        details={**plan.details, "uniform": True},
    )


def _hub_parts(model: keras.Model):
    """(backbone, task) of a keras-hub model, `(None, None)` for other models."""
    try:
        from keras_hub.models import Backbone, Task
    except ImportError:
        return None, None
    if isinstance(model, Backbone):
        return model, None
    if isinstance(model, Task) and isinstance(
        getattr(model, "backbone", None), Backbone
    ):
        return model.backbone, model
    return None, None


def _layers_by_path(model: keras.Model, prefix: str = "") -> dict[str, object]:
    """Every layer of a model by qualified name, nested functional models opened."""
    found = {}
    for layer in model.layers:
        name = prefix + layer.name
        if isinstance(layer, keras.Model):
            found.update(_layers_by_path(layer, f"{name}/"))
        elif layer.weights:
            found[name] = layer
    return found


def _backbone_config(backbone, plan: PruningPlan) -> dict | str:
    """The backbone's config with its blocks' pruned widths, or why there is none."""
    pruned = {n for n, g in plan.groups.items() if len(g.keep) < g.channels}
    if not pruned:
        return "the plan prunes nothing"
    # Nested in a task, the backbone's layers are named "backbone/layer".
    nested = any(name.startswith(f"{backbone.name}/") for name in plan.groups)
    prefix = f"{backbone.name}/" if nested else ""
    by_producer = {
        producer: name for name in pruned for producer in plan.groups[name].producers
    }
    config = backbone.get_config()
    changed: dict[str, object] = {}
    covered = set()
    for layer in backbone.layers:
        recipe = fixed_blocks.recipe_for(layer)
        if recipe is None:
            continue
        kept = {}
        for width in recipe.widths.values():
            sub = getattr(layer, width.sublayer, None)
            group = by_producer.get(f"{prefix}{layer.name}/{getattr(sub, 'name', '')}")
            if width.count != "attribute" and group is not None:
                covered.add(group)
                kept[id(sub)] = len(plan.groups[group].keep)
        block = recipe.configure(layer, layer.get_config(), kept)
        for argument in recipe.widths:
            if argument not in config:
                continue  # derived by the backbone: the shapes are checked later
            if changed.setdefault(argument, block[argument]) != block[argument]:
                return (
                    f"its blocks keep different {argument!r} (pass the plan "
                    "through hos_keras.uniform_plan)"
                )
    outside = sorted(pruned - covered)
    if outside:
        return f"the plan prunes {outside[0]!r}, a width no config argument holds"
    return {**config, **changed}


def rebuild_in_class(
    model: keras.Model, plan: PruningPlan, slim: keras.Model
) -> keras.Model | None:
    """A keras-hub model re-created in its own class with a plan's widths.

    Called by `slim_model` with the plain functional slim model it built; the
    weights come from there. Works when the model is a keras-hub `Backbone`, or a
    `Task` on one, and the plan's pruned widths are the same in every block and
    each one is a config argument of the backbone (see `hos_keras.fixed_blocks`
    for the blocks covered: Gemma's and Mistral's heads and MLP widths, Qwen's
    MLP width).

    Args:
        model: The original model.
        plan: The plan `slim` was built from.
        slim: `slim_model`'s functional result.

    Returns:
        The model in its class, or `None` where the class cannot be kept (a
        `CausalLM` warns, saying why: `generate()` is lost with it).
    """
    backbone, task = _hub_parts(model)
    if backbone is None:
        return None
    config = _backbone_config(backbone, plan)
    if isinstance(config, dict):
        rebuilt_backbone = type(backbone).from_config(config)
        rebuilt = rebuilt_backbone
        if task is not None:
            task_config = task.get_config()
            task_config["backbone"] = rebuilt_backbone
            rebuilt = type(task).from_config(task_config)
        config = _load_weights(rebuilt, slim)
        if config is None:
            return rebuilt
    if task is not None and hasattr(task, "generate"):
        warnings.warn(
            f"slim_model returns {model.name!r} as a plain functional model, "
            f"without generate(), since {config}. A {type(task).__name__} keeps "
            "its class when every block keeps the same widths "
            "(hos_keras.uniform_plan) and its backbone's config holds them.",
            stacklevel=3,
        )
    return None


def _load_weights(rebuilt: keras.Model, slim: keras.Model) -> str | None:
    """Copies every layer's weights from the slim model; why not, if it cannot."""
    source = _layers_by_path(slim)
    target = _layers_by_path(rebuilt)
    if set(source) != set(target):
        missing = sorted(set(source) ^ set(target))
        return f"its re-created layers match the slim model's ({missing[0]!r} differs)"
    for name, layer in target.items():
        values = source[name].get_weights()
        shapes = [tuple(v.shape) for v in values]
        if shapes != [tuple(w.shape) for w in layer.weights]:
            return (
                f"its config re-creates {name!r} with the pruned shapes "
                f"({[tuple(w.shape) for w in layer.weights]} against {shapes})"
            )
        layer.set_weights(values)
    return None
