"""Sparse training before pruning: push whole channel groups toward zero.

A plan removes channels; what those channels still carry when they go is what the
student has to recover. Training for a while with a penalty on the channels a plan
would remove shrinks them first, so that pruning takes away little. Two penalties
of the literature:

- `"group_norm"` (the group-norm regularisation of DepGraph, Fang et al., CVPR
  2023, Torch-Pruning's GroupNormPruner): every channel of a prunable group owns
  the weights that go with it (its producers' filters, the per-channel weights of
  the layers it passes, such as BatchNormalization's gamma and beta, and its
  consumers' input rows); the penalty is
  `strength / 2 * sum_c gamma_c * ||W_c||^2`, with
  `gamma_c = alpha ** ((s_max - s_c) / (s_max - s_min))` from the criterion's
  scores `s` within the group: the channels the criterion ranks least important
  are pushed `alpha` times harder than the most important one.
- `"bn_l1"` (network slimming, Liu et al., ICCV 2017): `strength * sum |gamma|` on
  the BatchNormalization scales of the prunable groups, applied by soft
  thresholding (a proximal step), so that scales reach exactly zero.

`GroupSparsity` applies the penalty as a decoupled step after every training batch
(as AdamW decouples weight decay): each penalised weight moves by the optimizer's
current learning rate times the penalty's gradient (or proximal step), whatever
the optimizer. The scores are recomputed at the start of every epoch.
"""

from __future__ import annotations

import keras
import numpy as np

from hos_keras import graph, layer_rules
from hos_keras.criteria import get_criterion
from hos_keras.errors import InvalidArgumentError, check_real

__all__ = ["GroupSparsity", "channel_weights"]

METHODS = ("group_norm", "bn_l1")


def channel_weights(model: keras.Model, channel_graph=None) -> dict:
    """Which channel class every weight entry of the model belongs to.

    Args:
        model: A built model.
        channel_graph: Its `graph.channel_groups(model)`, if already traced.

    Returns:
        `{layer name: [(variable, in_classes, out_classes)]}`: for each weight of
        every layer whose weights are indexed by channel, two int64 arrays shaped
        like the weight, the channel class of the entry's input and output channel
        (`-1` where the weight is not indexed by that axis). A channel's weights
        are the entries whose input or output class is the channel's class
        (`channel_graph.classes[group][channel]`).
    """
    if channel_graph is None:
        channel_graph = graph.channel_groups(model, warn=False)
    result = {}
    names = set(channel_graph.inputs) | set(channel_graph.outputs)
    for name in names:
        layer = channel_graph.layers[name]
        rule = layer_rules.get_rule(layer)
        if rule is None or not layer.weights:
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        labels = [
            [np.full(s, -1, dtype=np.int64) for s in shapes],
            [np.full(s, -1, dtype=np.int64) for s in shapes],
        ]
        for axis, table in enumerate((channel_graph.inputs, channel_graph.outputs)):
            classes = table.get(name)
            if classes is None or len(classes) < 2:
                continue
            index = [np.arange(int(np.prod(s))).reshape(s) for s in shapes]
            # A weight is indexed by the axis if dropping one position shrinks it.
            shrunk = _take(rule, layer, index, axis, np.arange(1, len(classes)))
            indexed = [
                np.size(part) < np.size(whole)
                for part, whole in zip(shrunk, index, strict=True)
            ]
            for position, label in enumerate(classes):
                if label < 0:
                    continue
                entries = _take(rule, layer, index, axis, [position])
                for i, at in enumerate(entries):
                    if indexed[i]:
                        labels[axis][i].reshape(-1)[np.asarray(at).reshape(-1)] = label
        result[name] = [
            (variable, labels[0][i], labels[1][i])
            for i, variable in enumerate(layer.weights)
            if (labels[0][i] >= 0).any() or (labels[1][i] >= 0).any()
        ]
    return {name: entries for name, entries in result.items() if entries}


def _take(rule, layer, index, axis: int, positions) -> list:
    """The entries of the index arrays at input (`axis` 0) or output positions."""
    keep = np.asarray(positions, dtype=np.int64)
    if axis == 0:
        return rule.slice_weights(layer, index, keep, None)
    return rule.slice_weights(layer, index, None, keep)


class GroupSparsity(keras.callbacks.Callback):
    """Sparse training: shrinks the channels a plan would remove, during `fit`.

    See the module for the two penalties. Attach it to any `fit` of the model to
    be pruned (before `plan_pruning`), or let `compress(..., sparse_epochs=N)` and
    `HOSPruneCallback(..., sparse=...)` do it.

    Args:
        criterion: The criterion whose scores rank the channels (any name of
            `hos_keras.criterion_names()` or a criterion instance). Defaults to
            `"k34"`.
        method: `"group_norm"` or `"bn_l1"`. Defaults to `"group_norm"`.
        strength: The penalty's coefficient (lambda). Defaults to `1e-3`.
        alpha: How much harder the least important channel of a group is pushed
            than the most important one (`"group_norm"`; `1` for a uniform
            penalty). Defaults to `4.0`.
        scope: Which groups are penalised, as `plan_pruning`'s `scope` (`"all"`,
            `"inner"`, `"conv"` or a function). Defaults to `"all"`.
        skip: Names or patterns of groups left alone. Defaults to `()`.
        data: Calibration data for a data-driven criterion (see
            `plan_pruning`). Defaults to `None`.
        calibration_steps: Batches of `data` to read. Defaults to `None` (all).
        seed: Seed of the `random` criterion. Defaults to `0`.

    Raises:
        InvalidArgumentError: for an unknown method, a negative strength or an
            alpha below 1.

    Example:

    ```python
    model.fit(train_ds, epochs=3, callbacks=[hos_keras.GroupSparsity("l1")])
    plan = hos_keras.plan_pruning(model, "l1", "target", macs_reduction=0.5)
    ```
    """

    def __init__(
        self,
        criterion="k34",
        method: str = "group_norm",
        strength: float = 1e-3,
        alpha: float = 4.0,
        scope="all",
        skip=(),
        data=None,
        calibration_steps: int | None = None,
        seed: int | None = 0,
    ):
        super().__init__()
        if method not in METHODS:
            raise InvalidArgumentError(
                f"Received method={method!r}; pass one of {list(METHODS)}."
            )
        self.strength = check_real("strength", strength, 0.0)
        self.alpha = check_real("alpha", alpha, 1.0)
        self.criterion = criterion
        self.method = method
        self.scope = scope
        self.skip = skip
        self.data = data
        self.calibration_steps = calibration_steps
        self.seed = seed
        self.scales: dict[str, np.ndarray] = {}
        self._steps: list = []

    def set_model(self, model):
        super().set_model(model)
        self._steps = []

    def on_epoch_begin(self, epoch, logs=None):
        self._prepare()

    def on_train_batch_end(self, batch, logs=None):
        if not self._steps:
            return
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        step = rate * self.strength
        ops = keras.ops
        for variable, scale in self._steps:  # in place, on the variables' device
            if self.method == "group_norm":
                variable.assign(variable * (1.0 - step * scale))
            else:
                shrunk = ops.maximum(ops.abs(variable) - step * scale, 0.0)
                variable.assign(ops.sign(variable) * shrunk)

    def _prepare(self):
        """Scores the channels and turns them into a scale per weight entry."""
        from hos_keras.plan import plan_pruning

        channel_graph = graph.channel_groups(self.model, warn=False)
        plan = plan_pruning(
            self.model,
            self.criterion,
            "fixed",
            ratio=0.0,
            scope=self.scope,
            skip=self.skip,
            seed=self.seed,
            data=self.data,
            calibration_steps=self.calibration_steps,
        )
        excluded = set(plan.details.get("excluded", ()))
        gamma = {}  # channel class -> scale
        self.scales = {}
        for name, entry in plan.groups.items():
            if name in excluded or entry.channels < 2:
                continue
            scores = np.asarray(entry.scores, dtype=np.float64)
            spread = scores.max() - scores.min()
            relative = (scores.max() - scores) / spread if spread > 0 else 0 * scores
            scale = self.alpha**relative
            self.scales[name] = scale
            for label, value in zip(channel_graph.classes[name], scale, strict=True):
                gamma[int(label)] = float(value)
        owners = channel_weights(self.model, channel_graph)
        largest = max(
            (int(max(a.max(), b.max())) for e in owners.values() for _, a, b in e),
            default=-1,
        )
        lookup = np.zeros(max(largest, *gamma, -1) + 2)  # index -1: no channel
        for label, value in gamma.items():
            lookup[label] = value
        steps = []
        for name, entries in owners.items():
            layer = channel_graph.layers[name]
            for variable, inputs, outputs in entries:
                if not variable.trainable:
                    continue  # e.g. moving statistics
                if self.method == "bn_l1":
                    if not (
                        isinstance(layer, keras.layers.BatchNormalization)
                        and variable is layer.gamma
                    ):
                        continue
                    labels = np.maximum(inputs, outputs)
                    scale = np.where(labels >= 0, lookup[labels] > 0, 0.0)
                else:
                    scale = lookup[inputs] + lookup[outputs]
                if np.any(scale):
                    scale = keras.ops.convert_to_tensor(scale, variable.dtype)
                    steps.append((variable, scale))
        if not steps:
            raise InvalidArgumentError(
                f"GroupSparsity(method={self.method!r}) found nothing to penalise in "
                f"model {self.model.name!r}"
                + (
                    ": it has no BatchNormalization in a prunable group; use "
                    "method='group_norm'."
                    if self.method == "bn_l1"
                    else "; widen scope or skip less."
                )
            )
        self._steps = steps


def from_argument(
    sparse, *, data=None, calibration_steps: int | None = None, **defaults
) -> GroupSparsity:
    """A `GroupSparsity` from a `sparse=` argument of compress, the callback or
    the tuner: `True` or `None` (the `defaults`), a dict of arguments overriding
    them, or an instance (used as it is).

    `data` and `calibration_steps` are passed only when the criterion scores
    feature maps (a data-driven criterion such as `"dfs"`).

    Raises:
        InvalidArgumentError: for anything else.
    """
    if isinstance(sparse, GroupSparsity):
        return sparse
    if sparse is True or sparse is None:
        sparse = {}
    if isinstance(sparse, dict):
        options = {**defaults, **sparse}
        criterion = get_criterion(
            options.get("criterion", "k34"), seed=options.get("seed", 0)
        )
        if data is not None and getattr(criterion, "statistics", ()):
            options.setdefault("data", data)
            options.setdefault("calibration_steps", calibration_steps)
        return GroupSparsity(**options)
    raise InvalidArgumentError(
        f"Received sparse={sparse!r}; pass True, a dict of GroupSparsity "
        "arguments (e.g. {'strength': 1e-2}) or a hos_keras.GroupSparsity."
    )
