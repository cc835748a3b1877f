"""The transformer blocks of a model and the channel groups each one owns.

A transformer block has two prunable widths: its attention heads (one group per
attention layer, see `hos_keras.attention`) and its MLP's intermediate width
(one group, the gate and up projections tied in a GLU). This module lists them
per block from the channel graph, so that code which treats blocks as units
(a uniform plan keeping the same widths in every block, a report per block, a
re-created keras-hub backbone) need not parse layer names itself.

A block is named after the path that holds its attention layers
(`"transformer_layer_0"` for `"transformer_layer_0/self_attention_layer"`; a
decoder block with self- and cross-attention has two); an inner width belongs to
it when every layer it touches (its producers and the layers that read it with
their weights, all after the producers) lies under that path. The hidden width, shared by all blocks, belongs to none.
"""

from __future__ import annotations

import dataclasses

import keras

from hos_keras import graph as graph_lib
from hos_keras import layer_rules
from hos_keras.attention import AttentionRule

__all__ = ["TransformerBlock", "transformer_blocks"]


@dataclasses.dataclass(frozen=True)
class TransformerBlock:
    """The prunable widths of one transformer block.

    Attributes:
        name: The path holding the block's attention layers (`""` at the top
            level).
        attention: The attention layers' qualified names, which are also the
            names of their head groups.
        units: For each attention layer, its prunable units: its heads, or its
            key/value heads with grouped-query attention.
        heads_per_unit: For each attention layer, its query heads per unit (1
            without grouped-query attention).
        mlp: Names of the other groups that lie inside the block (its MLP's
            intermediate width), in graph order.
        frozen: `{group name: reason}` for the block's groups (attention
            included) that cannot be pruned.
    """

    name: str
    attention: tuple[str, ...]
    units: tuple[int, ...]
    heads_per_unit: tuple[int, ...]
    mlp: tuple[str, ...]
    frozen: dict[str, str]

    @property
    def groups(self) -> tuple[str, ...]:
        """The head groups and the MLP groups, in that order."""
        return (*self.attention, *self.mlp)


def transformer_blocks(
    model: keras.Model, channel_graph: graph_lib.ChannelGraph | None = None
) -> list[TransformerBlock]:
    """Lists the transformer blocks of a model: its head and MLP groups.

    Args:
        model: A functional model (keras-hub backbones and tasks included).
        channel_graph: The model's channel graph, if already traced. Defaults to
            `hos_keras.channel_groups(model)`.

    Returns:
        One `TransformerBlock` per path holding attention layers hos_keras
        prunes, in graph order; empty for a model without one.

    Example:

    ```python
    backbone = keras_hub.models.BertBackbone(...)
    for block in hos_keras.transformer_blocks(backbone):
        print(block.name, block.attention, block.units, block.mlp)
    ```
    """
    if channel_graph is None:
        channel_graph = graph_lib.channel_groups(model, warn=False)
    found = []
    for group in channel_graph.groups:
        layer = channel_graph.layers[group.producers[0]]
        rule = layer_rules.get_rule(layer)
        if isinstance(rule, AttentionRule) and not rule.unsupported(layer):
            path = group.name.rpartition("/")[0]
            found.append((path, group, rule.units(layer), rule.group_size(layer)))
    found = _widened(found)
    order = {name: k for k, name in enumerate(channel_graph.tensors)}
    paths = list(dict.fromkeys(path for path, *_ in found))
    # Inner blocks first, so that a group goes to the deepest path that holds it.
    by_depth = sorted(paths, key=lambda path: -path.count("/"))
    mlp: dict[str, list[str]] = {path: [] for path in paths}
    attention_groups = {group.name for _, group, *_ in found}
    for group in channel_graph.groups:
        if group.name in attention_groups or not _inner(group, order):
            continue
        for path in by_depth:
            if all(_inside(name, path) for name in (*group.producers, *group.members)):
                mlp[path].append(group.name)
                break
    blocks = []
    for path in paths:
        mine = [item for item in found if item[0] == path]
        names = [group.name for _, group, *_ in mine] + mlp[path]
        frozen = {
            name: channel_graph.group(name).frozen
            for name in names
            if channel_graph.group(name).frozen
        }
        blocks.append(
            TransformerBlock(
                name=path,
                attention=tuple(group.name for _, group, *_ in mine),
                units=tuple(units for *_, units, _ in mine),
                heads_per_unit=tuple(size for *_, size in mine),
                mlp=tuple(mlp[path]),
                frozen=frozen,
            )
        )
    return blocks


def _widened(found: list) -> list:
    """Each attention path widened to the largest path (short of the model
    itself) that holds no other path's attention layers: a block that wraps its
    attention layer in a layer of its own (DINOv2) still gets its MLP."""
    paths = list(dict.fromkeys(path for path, *_ in found))

    def widen(path: str) -> str:
        while "/" in path:
            parent = path.rpartition("/")[0]
            if any(
                _under(other, parent) and not _under(other, path) for other in paths
            ):
                break
            path = parent
        return path

    wide = {path: widen(path) for path in paths}
    return [(wide[path], *rest) for path, *rest in found]


def _under(name: str, path: str) -> bool:
    return name == path or _inside(name, path)


def _inner(group, order: dict[str, int]) -> bool:
    """Whether a group is an inner width: layers read it with their weights, all
    after every producer (a residual stream is read before a block writes to
    it, or only through normalisations)."""
    readers = [m for m in group.members if m not in group.producers]
    if not readers:
        return False
    last = max(order.get(p, -1) for p in group.producers)
    return all(order.get(r, -1) > last for r in readers)


def _inside(name: str, path: str) -> bool:
    return not path or name.startswith(path + "/")
