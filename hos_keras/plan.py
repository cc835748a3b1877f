"""Scoring a model's filters and planning which channels to prune.

`score_filters` applies a criterion to every layer with output channels;
`plan_pruning` puts graph analysis, criterion and allocation together into a
`PruningPlan`: for each prunable channel group the channel indices kept, the ratio, the
layer statistic T and the scores, plus the parameters and MACs before and after.
A plan is plain data: it serializes to JSON and back exactly, and later steps
(surgery, masking, fine-tuning) only read it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from hos_keras import allocation as allocation_lib
from hos_keras import (
    calibration,
    cost_model,
    criteria,
    graph,
    latency_search,
    layer_rules,
)
from hos_keras import latency as latency_lib
from hos_keras.errors import (
    HOSKerasError,
    InvalidArgumentError,
    NonFiniteWeightsError,
    NothingToPruneError,
    UnreachableTargetError,
    check_int,
)
from hos_keras.plan_record import GroupPlan, PruningPlan

__all__ = [
    "GroupPlan",
    "PruningPlan",
    "plan_pruning",
    "restrict_plan",
    "score_filters",
]


def _iter_filter_layers(model: keras.Model):
    """(qualified name, layer) of every layer with filters, nested graphs included."""
    seen = set()
    for call in graph.iter_calls(model):
        rule = call.rule
        if call.name in seen or rule is None:
            continue
        if rule.has_filters:
            seen.add(call.name)
            yield call.name, call.operation


def _checked_filters(name: str, layer) -> np.ndarray:
    filters = layer_rules.filter_matrix(layer)
    if not np.all(np.isfinite(filters)):
        bad = int(np.size(filters) - np.count_nonzero(np.isfinite(filters)))
        raise NonFiniteWeightsError(
            f"Layer {name!r} has {bad} NaN or Inf weights; no statistic can be "
            "computed. Fix the training that produced them or reload good weights."
        )
    return filters


def _score(name: str, filters: np.ndarray, criterion) -> np.ndarray:
    try:
        scores = np.asarray(criterion(filters), dtype=np.float64)
    except HOSKerasError as error:
        raise type(error)(f"Layer {name!r}: {error}") from None
    if scores.shape != (filters.shape[1],):
        raise InvalidArgumentError(
            f"Criterion {criterion!r} returned shape {scores.shape} for layer "
            f"{name!r}; a criterion must return one score per filter "
            f"({filters.shape[1]},)."
        )
    if not np.all(np.isfinite(scores)):
        raise InvalidArgumentError(
            f"Criterion {criterion!r} returned non-finite scores for layer {name!r}."
        )
    return scores


def score_filters(
    model: keras.Model, criterion="k34", seed: int | None = 0
) -> dict[str, np.ndarray]:
    """Scores every output channel of every layer that has output channels.

    Covers Conv1D/2D/3D, their Transpose versions, SeparableConv (pointwise kernel),
    DepthwiseConv (per channel) and Dense, inside nested models too (named
    `"outer/inner"`).

    Args:
        model: A built Keras model.
        criterion: A name from `hos_keras.criteria.criterion_names()` (`"k34"`,
            `"abs_k34"`, `"skew"`, `"l1"`, `"random"`, ...) or a callable from a
            `(weights_per_filter, n_filters)` matrix to scores. Defaults to `"k34"`.
        seed: Seed of randomized criteria. Defaults to `0`.

    Returns:
        `{layer_name: float64 array of one score per output channel}`; lower
        scores are pruned first.

    Raises:
        NonFiniteWeightsError: if a layer has NaN/Inf weights (names the layer).
        UnknownNameError: for an unknown criterion name.

    Example:

    ```python
    scores = hos_keras.score_filters(model, criterion="k34")
    scores["stage1_block1_conv1"].shape  # (16,)
    ```
    """
    criterion = criteria.get_criterion(criterion, seed=seed)
    return {
        name: _score(name, _checked_filters(name, layer), criterion)
        for name, layer in _iter_filter_layers(model)
    }


def _keep_count(channels: int, ratio: float, min_channels: int, round_to: int) -> int:
    keep = math.floor(channels * (1.0 - ratio) + 1e-9)
    keep = max(keep, min_channels, 1)
    keep = math.ceil(keep / round_to) * round_to
    return min(keep, channels)


def _kept_indices(
    scores: np.ndarray, n_keep: int, producers: list[np.ndarray] = (), floor: int = 1
) -> np.ndarray:
    """Indices of the `n_keep` highest scores, ties broken by lower index removed.

    `producers` lists, for each producer of the group, the group positions of its
    output channels; each keeps at least `floor` of them (its best-scoring ones),
    which matters in groups that join several producers' distinct channels (a
    concatenation that a residual merge ties to one stream).
    """
    order = np.argsort(scores, kind="stable")
    kept = set(order[len(scores) - n_keep :].tolist())
    for positions in producers:
        have = sum(1 for p in positions if p in kept)
        need = min(floor, len(positions)) - have
        if need > 0:
            candidates = sorted(
                (p for p in positions if p not in kept), key=lambda p: -scores[p]
            )
            kept.update(candidates[:need])
    return np.array(sorted(kept), dtype=np.int64)


def plan_pruning(
    model: keras.Model,
    criterion="k34",
    allocation="shapiro",
    *,
    min_channels: int = 1,
    round_to: int | str = 1,
    seed: int | None = 0,
    group_reduction: str = "mean",
    scope: str | Callable[[graph.ChannelGroup], bool] = "all",
    skip: str | Sequence[str] = (),
    hidden_width: bool = False,
    runtime: str = "tflite",
    latency_model: latency_lib.LatencyModel | None = None,
    verify_latency: bool = True,
    latency_corrections: int = 4,
    data=None,
    calibration_steps: int | None = None,
    calibration_loss=None,
    **options,
) -> PruningPlan:
    """Plans which output channels of a model to prune.

    Finds the groups of coupled channels (`hos_keras.channel_groups`), scores the
    filters of each group's producers with `criterion` and combines them per group
    channel, lets `allocation` decide each group's ratio, and keeps the
    highest-scoring channels of each group.

    Args:
        model: A built functional or Sequential Keras model (not modified).
        criterion: Filter criterion name or callable (see `score_filters`).
            Defaults to `"k34"`, the paper's k3 * k4 ranked by signed value.
        allocation: One of `"shapiro"` (P1), `"jarque_bera"` (P2), `"k34"` (P3),
            `"global"` (P4), `"fixed"` (P5), `"target"`, or an `Allocation`
            instance. Defaults to `"shapiro"`.
        min_channels: Fewest channels any layer keeps. Defaults to `1`.
        round_to: Kept channels are rounded up to a multiple of this (e.g. 8 for
            hardware-friendly widths), never above the original; `"auto"` uses
            the output-channel tile measured on `runtime`
            (`hos_keras.latency.measure_tile`, cached). Defaults to `1`.
        seed: Seed for randomized criteria. Defaults to `0`.
        group_reduction: How the scores of a group's producers combine into one
            score per channel: `"mean"`, `"max"` or `"sum"`. Defaults to `"mean"`.
        scope: Which prunable groups the allocation may prune, for every
            allocation: `"all"`; `"inner"`, only groups made by one producer, so
            that no channel crossing a residual (or gating) merge is pruned and
            the streams keep their width - the paper's scope, which prunes the
            first conv of each residual block; `"conv"`, only groups of
            convolution layers (no Dense); or a function from a
            `hos_keras.ChannelGroup` to a bool. Groups out of scope keep every
            channel. Defaults to `"all"`.
        skip: Names or shell-style patterns (`"stage3_*"`) of groups never
            pruned, matched against every producer of a group; for every
            allocation. Defaults to `()`.
        hidden_width: Also prune a transformer's hidden width, the residual
            stream: one group made of the embeddings' output channels, every
            LayerNormalization / RMSNormalization scale and bias, the input rows
            of every projection reading the stream, the output columns of the
            attention and MLP output projections, the residual adds, the final
            norm and a tied reversible embedding's logits
            (`channel_groups(hidden_width=True)`). Opt-in because it is not
            exact: the normalisations average over the kept channels only, so
            the slim model differs from the masked one. The masked model
            (`mask_model`) is the original with the removed stream channels
            set to zero (embedding columns, norm scales and biases, output
            projection columns) and the weights reading them zeroed; its norms
            still average over the full width. The plan records
            `details["hidden_width"]`: the stream group's name and channels
            kept, and the relative error `||slim(x) - masked(x)|| /
            ||masked(x)||` (and the largest absolute difference) of the outputs
            on `x`, the first batch of `data` if given, else random inputs
            (4 examples; floats standard normal, integer inputs uniform below
            the smallest embedding vocabulary, or in {0, 1} for inputs named
            like masks or segment ids), and a warning gives the figure.
            `slim_model` and `mask_model` read the flag from the plan. Defaults
            to `False`, which freezes the hidden width.
        runtime: The runtime a latency target is measured on: `"tflite"` (the
            TFLite interpreter, batch 1, 2 threads) or `"tf"` (TensorFlow, batch
            1). Only used with `latency_reduction=`. Defaults to `"tflite"`.
        latency_model: A `hos_keras.latency.LatencyModel` of this model (for
            another runtime, batch size or thread count); `None` builds (or loads
            from the cache) one for `runtime`. Defaults to `None`.
        verify_latency: With a latency target, slim the model and measure it on
            the runtime; `plan.details` then holds the measured latency and
            speed-up beside the predicted ones. Defaults to `True`.
        latency_corrections: With a latency target and `verify_latency`, how many
            more plans may be measured when the measured reduction falls short of
            the target (or exceeds it by more than 0.05), as NetAdapt measures in
            the loop. First the difference is added to the reduction asked of the
            latency model; once the model cannot give new widths (or predicts the
            target unreachable, which small networks' noisy one-layer timings can
            make it do wrongly), the search goes on over the MACs reduction,
            interpolating between the measured plans. The least pruned plan that
            met the target is returned; each round is recorded in
            `plan.details["latency"]["rounds"]`, and `["met"]` says whether any
            did. `0` trusts the model. Defaults to `4`.
        data: Calibration data for the data-driven criteria (`"dfs"`, `"sfs"`,
            `"taylor"`, `"fisher"`, `"activation_k34"`, ...; see
            `criteria.ActivationCriterion`): `(x, y)` arrays or a
            `tf.data.Dataset` of `(x, y)` batches. Refused with a weight
            criterion. Defaults to `None`.
        calibration_steps: Batches of `data` to use; `None` for all. Defaults to
            `None`.
        calibration_loss: Loss of the gradient criteria (`taylor`, `fisher`),
            called as `loss(y, output)` per example; `None` for sparse
            categorical cross-entropy. Defaults to `None`.
        **options: Arguments of the allocation, e.g. `coefficient=3.7` (P1-P3),
            `fraction=0.32` (global), `ratio=0.3` (fixed),
            `macs_reduction=0.5` or `latency_reduction=0.5` and `base="shapiro"`
            (target).

    Returns:
        A `PruningPlan`.

    Raises:
        UnknownNameError: for an unknown criterion or allocation name.
        InvalidArgumentError: for out-of-range options (the message names them).
        UnreachableTargetError: if the allocation cannot reach a MACs target, or
            a latency target by the latency model's prediction when the plan is
            not measured (`verify_latency=False` or `latency_corrections=0`).
        NonFiniteWeightsError: if a prunable layer has NaN/Inf weights.
        NothingToPruneError: if the model has no prunable layer.
        UnsupportedModelError: for a subclassed or unbuilt model.

    Example:

    ```python
    model = hos_keras.models.resnet56()
    plan = hos_keras.plan_pruning(model, criterion="k34", allocation="target",
                                  macs_reduction=0.5)
    plan.summary()
    ```
    """
    min_channels = check_int("min_channels", min_channels)
    corrections = check_int("latency_corrections", latency_corrections, minimum=0)
    if round_to == "auto":
        round_to = latency_lib.measure_tile(runtime)
    round_to = check_int("round_to", round_to)
    if group_reduction not in _REDUCTIONS:
        raise InvalidArgumentError(
            f"Received group_reduction={group_reduction!r}; pass one of "
            f"{sorted(_REDUCTIONS)}."
        )
    allocator = allocation_lib.get_allocation(allocation, **options)
    scorer = criteria.get_criterion(criterion, seed=seed)
    wants_latency = getattr(allocator, "latency_reduction", None) is not None

    in_scope = _scope_filter(scope, skip)
    if not isinstance(hidden_width, bool):
        raise InvalidArgumentError(
            f"Received hidden_width={hidden_width!r}; pass True to prune the "
            "hidden width of a transformer or False (the default) to keep it."
        )

    channel_graph = graph.channel_groups(model, hidden_width=hidden_width)
    stream = _stream_group(model, channel_graph) if hidden_width else None
    prunable = channel_graph.prunable
    frozen = {g.name: g.frozen for g in channel_graph.groups if g.frozen}
    if not prunable:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(frozen.items())[:5])
        raise NothingToPruneError(
            f"Model {model.name!r} has no channels that can be pruned. "
            f"{reasons or 'It has no Conv or Dense layer.'}"
        )
    by_name = {g.name: g for g in prunable}
    selected = [g.name for g in prunable if in_scope(g, channel_graph)]
    if not selected:
        raise NothingToPruneError(
            f"No prunable group of model {model.name!r} is left with scope="
            f"{scope!r} and skip={skip!r} (prunable groups: "
            f"{[g.name for g in prunable][:8]}). Widen the scope or skip less."
        )
    filters = {
        p: _checked_filters(p, channel_graph.layers[p])
        for g in prunable
        for p in g.producers
    }
    statistics = getattr(scorer, "statistics", ())
    data_allocation = getattr(allocator, "needs_data", False)
    if data is not None and not statistics and not data_allocation:
        raise InvalidArgumentError(
            f"Received data= with criterion={criterion!r} and allocation="
            f"{allocation!r}, which read weights only; calibration data is for the "
            "data-driven criteria (dfs, sfs, taylor, fisher, activation_k34, ...) "
            "and allocation='itpruner'. Drop data= or pick one of them."
        )
    activations = {}
    if statistics:
        # Nested layers and attention heads included: calibration records each
        # producer's channels where they are while the model runs.
        activations = calibration.collect(
            model,
            {p: channel_graph.layers[p] for p in filters},
            data,
            steps=calibration_steps,
            wanted=statistics,
            loss=calibration_loss,
        )
    counter = cost_model.CostCounter(model, channel_graph)
    base_cost = {"params": counter.params, "macs": counter.macs}
    needs_macs = getattr(scorer, "needs_macs", False)

    def macs_per_channel(group) -> float:
        one_less = {group.name: np.arange(group.channels - 1)}
        return float(base_cost["macs"] - counter.cost(one_less)["macs"])

    scores = {
        g.name: _group_scores(
            g,
            channel_graph,
            filters,
            scorer,
            group_reduction,
            activations,
            macs_per_channel(g) if needs_macs else None,
        )
        for g in prunable
    }
    # T_min/T_max of stat_range="conv": every convolution of the network, each
    # group's producers taken together, Dense layers left out.
    in_groups = {p for g in prunable for p in g.producers}
    filter_layers = dict(_iter_filter_layers(model))
    conv_names = [
        g.name
        for g in prunable
        if not any(_is_dense(channel_graph.layers[p]) for p in g.producers)
    ] + [
        name
        for name, layer in filter_layers.items()
        if not _is_dense(layer) and name not in in_groups
    ]

    def weights(name: str) -> np.ndarray:
        if name in by_name:
            return np.concatenate(
                [filters[p].reshape(-1) for p in by_name[name].producers]
            )
        return _checked_filters(name, filter_layers[name])

    positions = {g.name: _producer_positions(g, channel_graph) for g in prunable}

    if wants_latency and latency_model is None:
        latency_model = latency_lib.build_latency_model(
            model, runtime, channel_graph=channel_graph
        )
    cost = _PlanCost(
        counter,
        {name: g.channels for name, g in by_name.items()},
        scores,
        positions,
        min_channels,
        round_to,
        base_cost["macs"],
        latency_model,
    )
    keep_counts, kept = cost.keep_counts, cost.kept

    def features(names: Sequence[str], images: int) -> np.ndarray:
        first = [by_name[name].producers[0] for name in names]
        nested = [p for p in first if "/" in p]
        if nested:
            raise InvalidArgumentError(
                f"The feature maps of {nested[:3]} are inside nested models; "
                "allocation='itpruner' reads top-level layers only."
            )
        maps = calibration.features(model, first, data, images)
        return calibration.linear_cka({p: maps[p] for p in first})

    context = allocation_lib.AllocationContext(
        layers=selected,
        channels={g.name: g.channels for g in prunable},
        scores=scores,
        weights=weights,
        reference=conv_names,
        cost=cost,
        features=features if data is not None else None,
    )

    def assemble(allocator) -> PruningPlan:
        allocated = allocator.allocate(context)
        ratios = {name: 0.0 for name in by_name}
        ratios.update(allocated.ratios)
        counts = keep_counts(ratios)
        after = cost.cost(counts)
        statistics = allocated.statistics or {}
        kept_indices = kept(counts)
        groups = {
            g.name: GroupPlan(
                name=g.name,
                producers=g.producers,
                channels=g.channels,
                keep=kept_indices[g.name],
                ratio=float(ratios[g.name]),
                statistic=statistics.get(g.name),
                scores=scores[g.name],
                members=g.members,
            )
            for g in prunable
        }
        details = {k: _plain(v) for k, v in allocated.details.items()}
        if scope != "all" or skip:
            details["scope"] = scope if isinstance(scope, str) else _name_of(scope)
            details["skip"] = [skip] if isinstance(skip, str) else list(skip)
            details["excluded"] = [name for name in by_name if name not in selected]
        if latency_model is not None:
            predicted = latency_model.predict(
                *counter.channels.counts({n: g.keep for n, g in groups.items()})
            )
            details["latency"] = {
                "runtime": latency_model.runtime,
                "batch_size": latency_model.batch_size,
                "threads": latency_model.threads,
                "original_ms": latency_model.base_ms,
                "predicted_ms": predicted,
                "predicted_speedup": latency_model.base_ms / max(predicted, 1e-9),
            }
        return PruningPlan(
            model_name=model.name,
            criterion=getattr(
                scorer, "name", getattr(scorer, "__name__", repr(scorer))
            ),
            allocation=allocator.name,
            allocation_config=allocator.get_config(),
            groups=groups,
            frozen=frozen,
            params_before=base_cost["params"],
            params_after=after["params"],
            macs_before=base_cost["macs"],
            macs_after=after["macs"],
            details=details,
        )

    search = latency_model is not None and verify_latency
    try:
        plan = assemble(allocator)
    except UnreachableTargetError:
        if not (search and wants_latency and corrections):
            raise
        plan = None  # the latency model says no; measurements may say yes
    if search:
        plan = latency_search.measured_search(
            model, plan, allocator, assemble, latency_model, corrections
        )
    if stream is not None:
        _record_hidden_width(model, plan, stream, data)
    return plan


def _stream_group(model, channel_graph) -> str:
    """The prunable group of the hidden width; raises if it is frozen."""
    stream = [
        g
        for g in channel_graph.groups
        if any(
            isinstance(
                layer_rules.get_rule(channel_graph.layers[m]), layer_rules.Stream
            )
            for m in g.members
        )
    ]
    prunable = [g.name for g in stream if g.prunable]
    if not prunable:
        none = (
            "it has no Embedding, LayerNormalization or RMSNormalization whose "
            "channels hos_keras can follow"
        )
        reasons = sorted({g.frozen for g in stream}) or [none]
        raise NothingToPruneError(
            f"hidden_width=True, but the hidden width of model {model.name!r} "
            f"cannot be pruned: {'; '.join(reasons)[:600]}. Prune heads and MLP "
            "widths only (hidden_width=False), or register a layer rule for the "
            "layer named."
        )
    return prunable[0]


def _record_hidden_width(model, plan: PruningPlan, stream: str, data) -> None:
    """Measures the slim model against the masked one (see `hidden_width`)."""
    import warnings

    from hos_keras import surgery

    source = "random" if data is None else "data"
    plan.details["hidden_width"] = {"group": stream, "inputs": source}
    x = _probe_inputs(model) if data is None else _first_batch(data)
    masked = surgery.mask_model(model, plan)(x, training=False)
    slim = surgery.slim_model(model, plan)(x, training=False)
    masked = np.concatenate(
        [np.ravel(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(masked)]
    ).astype(np.float64)
    slim = np.concatenate(
        [np.ravel(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(slim)]
    ).astype(np.float64)
    error = float(np.linalg.norm(slim - masked) / max(np.linalg.norm(masked), 1e-30))
    entry = plan.groups.get(stream)
    plan.details["hidden_width"].update(
        channels=int(entry.channels) if entry else 0,
        kept=len(entry.keep) if entry else 0,
        relative_error=error,
        max_abs_error=float(np.max(np.abs(slim - masked), initial=0.0)),
    )
    warnings.warn(
        f"hidden_width=True: the slim model of {model.name!r} is not exact. Its "
        "normalisations average over the kept hidden channels only, so it differs "
        f"from the masked model by a relative output error of {error:.3g} on "
        f"{source} inputs (plan.details['hidden_width']). Fine-tune it.",
        stacklevel=3,
    )


def _probe_inputs(model, batch: int = 4, length: int = 16):
    """Random inputs for the model (see `plan_pruning(hidden_width=...)`)."""
    rng = np.random.default_rng(0)
    vocabularies = [
        int(call.operation.input_dim)
        for call in graph.iter_calls(model)
        if isinstance(call.operation, keras.layers.Embedding)
    ]
    vocabulary = min(vocabularies, default=2)
    inputs, _ = graph.io_structure(model)
    arrays = []
    for tensor in keras.tree.flatten(inputs):
        shape = [batch] + [length if d is None else int(d) for d in tensor.shape[1:]]
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if "int" in dtype or dtype == "bool":
            name = tensor.name.lower()
            high = 2 if "mask" in name or "segment" in name else vocabulary
            arrays.append(rng.integers(0, high, size=shape).astype(dtype))
        else:
            arrays.append(rng.normal(size=shape).astype(dtype))
    return keras.tree.pack_sequence_as(inputs, arrays)


def _first_batch(data):
    """The inputs of the first batch of `(x, y)` arrays or a dataset of them."""
    if isinstance(data, (tuple, list)):
        x = data[0]
        return keras.tree.map_structure(lambda a: np.asarray(a)[:32], x)
    return next(iter(data))[0]


_REDUCTIONS = {"mean": np.mean, "max": np.max, "sum": np.sum}
_SCOPES = ("all", "inner", "conv")


def _is_dense(layer) -> bool:
    return isinstance(layer_rules.get_rule(layer), layer_rules.DenseRule)


def _name_of(function) -> str:
    return getattr(function, "__name__", repr(function))


def _scope_filter(scope, skip) -> Callable[[graph.ChannelGroup, Any], bool]:
    """Checks `scope` and `skip`; returns `(group, channel_graph) -> in scope`."""
    if isinstance(skip, str):
        skip = [skip]
    if not isinstance(skip, Sequence) or not all(isinstance(p, str) for p in skip):
        raise InvalidArgumentError(
            f"Received skip={skip!r}; pass layer names or shell-style patterns, "
            'e.g. skip=["stem_conv", "stage3_*"].'
        )
    if not callable(scope) and scope not in _SCOPES:
        raise InvalidArgumentError(
            f"Received scope={scope!r}; pass one of {list(_SCOPES)} or a function "
            "from a hos_keras.ChannelGroup to a bool."
        )

    def in_scope(group, channel_graph) -> bool:
        if any(fnmatch.fnmatchcase(p, s) for p in group.producers for s in skip):
            return False
        if callable(scope):
            return bool(scope(group))
        if scope == "inner":
            return len(group.producers) == 1
        if scope == "conv":
            return not any(_is_dense(channel_graph.layers[p]) for p in group.producers)
        return True

    return in_scope


class _PlanCost(allocation_lib.CostModel):
    """The planner's `CostModel`: kept channels by score, MACs counted on the
    channel graph, latency predicted by the latency model (if any)."""

    def __init__(
        self,
        counter,
        channels,
        scores,
        positions,
        min_channels,
        round_to,
        base_macs,
        latency_model=None,
    ):
        self.counter = counter
        self.channels, self.scores, self.positions = channels, scores, positions
        self.min_channels, self.round_to = min_channels, round_to
        self.base_macs, self.latency_model = base_macs, latency_model
        self.has_latency = latency_model is not None

    def kept(self, counts: Mapping[str, int]) -> dict[str, np.ndarray]:
        """The indices each group keeps at `counts`: its best-scored channels."""
        return {
            n: _kept_indices(self.scores[n], c, self.positions[n], self.min_channels)
            for n, c in counts.items()
        }

    def cost(self, counts: Mapping[str, int]) -> dict:
        """`profile`-style params and MACs of the model at `counts`."""
        return self.counter.cost(self.kept(counts))

    def keep_counts(self, ratios: Mapping[str, float]) -> dict[str, int]:
        return {
            name: _keep_count(
                self.channels[name], ratio, self.min_channels, self.round_to
            )
            for name, ratio in ratios.items()
        }

    def macs_reduction(self, counts: Mapping[str, int]) -> float:
        return 1.0 - self.cost(counts)["macs"] / self.base_macs

    def latency_reduction(self, counts: Mapping[str, int]) -> float:
        if self.latency_model is None:
            return super().latency_reduction(counts)
        predicted = self.latency_model.predict(
            *self.counter.channels.counts(self.kept(counts))
        )
        return 1.0 - predicted / self.latency_model.base_ms


def restrict_plan(
    model: keras.Model, plan: PruningPlan, previous: PruningPlan
) -> PruningPlan:
    """A copy of `plan` that also removes every channel `previous` removed.

    Used by progressive pruning so that the latest plan describes all channels
    masked so far. Each group keeps the channels both plans keep. Where that leaves
    a producer of the group with none of its channels, the producer keeps the one
    channel, among those `previous` kept, that `plan` scores highest: a channel
    removed earlier never comes back. A group whose kept count changes gets the
    ratio it now has, `1 - kept / channels`, so that ratio and kept count agree.
    The costs after pruning are recomputed.

    Args:
        model: The model both plans were made for.
        plan: The newer plan.
        previous: The earlier plan.

    Returns:
        A new `PruningPlan`.
    """
    channel_graph = graph.channel_groups(model, warn=False)
    groups = {}
    for name, entry in plan.groups.items():
        if name not in previous.groups:
            groups[name] = entry
            continue
        earlier = previous.groups[name].keep
        positions = _producer_positions(channel_graph.group(name), channel_graph)
        keep = _kept_in_both(entry, earlier, positions or [np.arange(entry.channels)])
        ratio = entry.ratio
        if len(keep) != len(entry.keep):
            ratio = 1.0 - len(keep) / entry.channels
        groups[name] = dataclasses.replace(entry, keep=keep, ratio=ratio)
    after = cost_model.CostCounter(model, channel_graph).cost(
        {n: g.keep for n, g in groups.items()}
    )
    return dataclasses.replace(
        plan, groups=groups, params_after=after["params"], macs_after=after["macs"]
    )


def _kept_in_both(
    entry: GroupPlan, earlier: np.ndarray, positions: list[np.ndarray]
) -> np.ndarray:
    """The channels `entry` and `earlier` both keep, plus, for each producer's
    `positions` none of which is left, the one in `earlier` that `entry` scores
    highest (ties: the higher index, as in `_kept_indices`)."""
    kept = set(np.intersect1d(entry.keep, earlier).tolist())
    for candidates in positions:
        allowed = np.intersect1d(candidates, earlier)
        if len(allowed) and not kept.intersection(allowed.tolist()):
            best = np.argsort(entry.scores[allowed], kind="stable")[-1]
            kept.add(int(allowed[best]))
    return np.array(sorted(kept), dtype=np.int64)


def _producer_positions(group, channel_graph) -> list[np.ndarray]:
    """For each producer of a group, the group positions of its channels."""
    if len(group.producers) < 2:
        return []
    position = {c: k for k, c in enumerate(channel_graph.classes[group.name].tolist())}
    return [
        np.unique([position[c] for c in channel_graph.outputs[p].tolist()])
        for p in group.producers
    ]


def _group_scores(
    group, channel_graph, filters, scorer, reduction, activations=None, macs=None
) -> np.ndarray:
    """One score per group channel: the producers' filter scores, combined; or a
    group criterion's scores of the whole group."""
    if isinstance(scorer, criteria.GroupCriterion):
        view = _group_view(group, channel_graph, filters)
        view.activations = {
            p: activations[p] for p in group.producers if p in (activations or {})
        }
        view.macs_per_channel = macs
        try:
            values = np.asarray(scorer.score_group(view), dtype=np.float64)
        except HOSKerasError as error:
            raise type(error)(f"Channel group {group.name!r}: {error}") from None
        if values.shape != (group.channels,) or not np.all(np.isfinite(values)):
            raise InvalidArgumentError(
                f"Criterion {scorer!r} returned scores of shape {values.shape} "
                f"for channel group {group.name!r}, finite: "
                f"{bool(np.all(np.isfinite(values)))}; a group criterion must "
                f"return {group.channels} finite scores."
            )
        return values
    position = {c: k for k, c in enumerate(channel_graph.classes[group.name].tolist())}
    collected: list[list[float]] = [[] for _ in range(group.channels)]
    for producer in group.producers:
        values = _score(producer, filters[producer], scorer)
        for j, cls in enumerate(channel_graph.outputs[producer].tolist()):
            collected[position[cls]].append(values[j])
    combine = _REDUCTIONS[reduction]
    return np.array([combine(v) for v in collected], dtype=np.float64)


def _group_view(group, channel_graph, filters) -> criteria.GroupView:
    """The group as a group criterion sees it (see `criteria.GroupView`)."""
    position = {c: k for k, c in enumerate(channel_graph.classes[group.name].tolist())}

    def positions(classes: np.ndarray) -> np.ndarray:
        return np.array([position.get(c, -1) for c in classes.tolist()], np.int64)

    producers = {
        p: (filters[p], positions(channel_graph.outputs[p])) for p in group.producers
    }
    per_channel, consumers = {}, {}
    for member in group.members:
        if member not in channel_graph.inputs:
            continue
        at = positions(channel_graph.inputs[member])
        if not (at >= 0).any():
            continue
        layer = channel_graph.layers[member]
        # A producer can read its own group too (a residual block's conv reads
        # the stream it adds to): it is then a consumer as well.
        if member not in group.producers and isinstance(
            layer_rules.get_rule(layer), layer_rules.PerChannel
        ):
            per_channel[member] = (layer, at)
        else:
            consumers[member] = (layer, at)
    return criteria.GroupView(
        name=group.name,
        channels=group.channels,
        producers=producers,
        per_channel=per_channel,
        consumers=consumers,
    )


def _plain(value):
    """Numpy scalars to Python numbers, for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    return value
