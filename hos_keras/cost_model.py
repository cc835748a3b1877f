"""Channel counts and costs of a model at any kept channels, from tables built once.

A target search evaluates dozens of candidate plans. Counting each by asking, for
every layer, which of its channel positions survive (a set operation per layer per
candidate) made one evaluation cost 0.7 s on a 516-layer network. `ChannelCounter`
reads the channel graph once into sparse matrices, one row per layer and one
column per channel class of the prunable groups, holding how many of the layer's
positions carry that class; the surviving positions of every layer at once are
then one sparse product with the vector of removed classes. `CostCounter` keeps
each call's parameters and MACs at full width and recounts only the calls whose
channels change, with the same rule and the same channel convention as
`hos_keras.profile` (`profile.call_channels`), so the totals are `profile`'s,
exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse

from hos_keras import graph, layer_rules
from hos_keras.profile import call_channels

__all__ = ["ChannelCounter", "CostCounter"]


class _Table:
    """One of the channel graph's position tables (`inputs`, `outputs`,
    `tensors`) as a sparse count matrix over the prunable classes."""

    def __init__(self, table: Mapping[str, np.ndarray], column: Mapping[int, int]):
        self.names = list(table)
        rows, cols = [], []
        for row, name in enumerate(self.names):
            for cls in np.asarray(table[name]).ravel():
                col = column.get(int(cls))
                if col is not None:
                    rows.append(row)
                    cols.append(col)
        self.sizes = np.array([np.asarray(table[n]).size for n in self.names])
        self.matrix = scipy.sparse.csr_matrix(
            (np.ones(len(rows)), (rows, cols)),
            shape=(len(self.names), max(len(column), 1)),
        )

    def kept(self, removed: np.ndarray) -> dict[str, int]:
        """Positions kept per layer, for the layers that lose some."""
        lost = np.rint(self.matrix @ removed).astype(np.int64)
        return {
            self.names[i]: int(self.sizes[i] - lost[i]) for i in np.flatnonzero(lost)
        }


class ChannelCounter:
    """Kept channel counts of every layer, for any kept channels of the groups.

    Args:
        channel_graph: The model's `ChannelGraph`.
    """

    def __init__(self, channel_graph: graph.ChannelGraph):
        self.channel_graph = channel_graph
        classes = sorted(
            {
                int(c)
                for name in channel_graph.classes
                for c in channel_graph.classes[name]
            }
        )
        self.column = {cls: i for i, cls in enumerate(classes)}
        self.group_columns = {
            name: np.array([self.column[int(c)] for c in channel_graph.classes[name]])
            for name in channel_graph.classes
        }
        self.inputs = _Table(channel_graph.inputs, self.column)
        self.outputs = _Table(channel_graph.outputs, self.column)
        self.tensors = _Table(channel_graph.tensors, self.column)

    def removed(self, keeps: Mapping[str, np.ndarray]) -> np.ndarray:
        """1 for every class a pruning removes (a class goes with any channel of
        it that is not kept), else 0."""
        removed = np.zeros(max(len(self.column), 1))
        for name, keep in keeps.items():
            columns = self.group_columns[name]
            dropped = np.ones(len(columns), dtype=bool)
            dropped[np.asarray(keep, dtype=np.int64)] = False
            removed[columns[dropped]] = 1.0
        return removed

    def counts(self, keeps: Mapping[str, np.ndarray], tensors: bool = True):
        """`(in_channels, out_channels, tensor_channels)` of the layers a pruning
        changes, each group reduced to its kept channels (`keeps`: group name ->
        kept indices); `tensors=False` leaves the per-layer output counts (only
        latency models need them) empty."""
        removed = self.removed(keeps)
        in_channels = self.inputs.kept(removed)
        out_channels = self.outputs.kept(removed)
        for name, count in in_channels.items():
            layer = self.channel_graph.layers[name]
            rule = layer_rules.get_rule(layer)
            if rule is not None and not rule.creates(layer):
                out_channels[name] = rule.passed(layer, count)
        tensor_channels = self.tensors.kept(removed) if tensors else {}
        return in_channels, out_channels, tensor_channels


class CostCounter:
    """`profile`'s params and MACs of a model at any kept channels.

    Args:
        model: The model.
        channel_graph: Its `ChannelGraph`.
    """

    def __init__(self, model, channel_graph: graph.ChannelGraph):
        self.channels = ChannelCounter(channel_graph)
        self.calls = []
        self.by_name: dict[str, list[int]] = {}
        seen = set()
        params = macs = 0
        for call in graph.iter_calls(model):
            rule = call.rule or layer_rules.LayerRule()
            # Parameters once per layer, as profile counts them.
            first = id(call.operation) not in seen
            seen.add(id(call.operation))
            c_in, c_out = call_channels(
                rule, call.operation, call.node, call.name, {}, {}
            )
            p, m = rule.cost(call.operation, call.node, c_in, c_out)
            self.by_name.setdefault(call.name, []).append(len(self.calls))
            self.calls.append((call, rule, first, int(p) if first else 0, int(m)))
            params += int(p) if first else 0
            macs += int(m)
        self.params, self.macs = params, macs

    def cost(self, keeps: Mapping[str, np.ndarray]) -> dict:
        """`{"params": int, "macs": int}` of the model with each group in `keeps`
        reduced to its kept channels (as `profile` with the same overrides)."""
        in_channels, out_channels, _ = self.channels.counts(keeps, tensors=False)
        params, macs = self.params, self.macs
        for name in set(in_channels) | set(out_channels):
            for index in self.by_name.get(name, ()):
                call, rule, first, p0, m0 = self.calls[index]
                c_in, c_out = call_channels(
                    rule, call.operation, call.node, name, in_channels, out_channels
                )
                p, m = rule.cost(call.operation, call.node, c_in, c_out)
                macs += int(m) - m0
                if first:
                    params += int(p) - p0
        return {"params": params, "macs": macs}
