"""Per-layer allocation: how many channels each prunable layer loses.

An allocation turns the facts about the prunable layers (their filter scores and
their weights) into a pruning ratio per layer. Which filters go inside a layer is
the criterion's job; the allocation only decides how many.

From Chatzikonstantinou et al., "Neural Network Compression Using Higher-Order
Statistics and Auxiliary Reconstruction Losses", CVPRW 2020, section 3.2:

- `ShapiroWilkAllocation` (P1), `JarqueBeraAllocation` (P2) and
  `CumulantAllocation` (P3): a layer statistic T of the layer's weights; layers
  with a larger T lose more channels by the paper's eq. 9,
  `r = ceil((T - T_min) / (c * (T_max - T_min)) / step) * step`, with T_min and
  T_max taken over the network itself and the coefficient `c` a parameter. For P1
  and P2 a larger T means more Gaussian weights; for P3, as in the authors' code,
  a larger |k3 * k4|, i.e. weights further from Gaussian.
- `GlobalAllocation` (P4): one threshold over the scores of all prunable filters.
- `FixedAllocation` (P5): given ratios per layer or per stage
  (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

Which groups an allocation may touch at all (`scope=`, `skip=`) is the planner's
choice, the same for every allocation (`hos_keras.plan_pruning`).
- `TargetAllocation`: searches the coefficient (or the global fraction, or a uniform
  ratio) until the plan removes a requested share of the model's MACs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from hos_keras import stats
from hos_keras.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    UnknownNameError,
    UnreachableTargetError,
    check_int,
    check_real,
)

__all__ = [
    "Allocation",
    "AllocationContext",
    "CostModel",
    "CumulantAllocation",
    "FixedAllocation",
    "GlobalAllocation",
    "ITPrunerAllocation",
    "JarqueBeraAllocation",
    "Knob",
    "ShapiroWilkAllocation",
    "StatisticAllocation",
    "TargetAllocation",
    "allocation_names",
    "eq9_ratios",
    "for_target",
    "get_allocation",
    "register_allocation",
]


class CostModel:
    """What a plan costs, as allocations see it: how ratios round to kept
    channels, and the share of the model's MACs (and of its predicted latency)
    those channels remove.

    The planner makes one per plan; a subclass may wrap another (progressive
    pruning does, to count channels removed by an earlier step).
    """

    #: Whether `latency_reduction` can be asked (the planner has a latency model).
    has_latency: bool = False

    def keep_counts(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """Channels kept per group for these ratios (min_channels, round_to)."""
        raise NotImplementedError

    def macs_reduction(self, counts: Mapping[str, int]) -> float:
        """Fraction of the model's MACs removed when each group keeps `counts`."""
        raise NotImplementedError

    def latency_reduction(self, counts: Mapping[str, int]) -> float:
        """Fraction of the model's predicted latency removed (see `has_latency`)."""
        raise InvalidArgumentError(
            "latency_reduction needs a latency model; plan with "
            "hos_keras.plan_pruning(..., runtime=...) or pass latency_model=."
        )


@dataclasses.dataclass
class AllocationContext:
    """What an allocation may look at.

    Attributes:
        layers: Names of the prunable layers, in graph order.
        channels: Output channels of each prunable layer.
        scores: Filter scores of each prunable layer (lowest pruned first).
        weights: Function from a layer name to all of its kernel weights (flat).
        reference: Groups and layers whose statistic sets T_min and T_max under
            `stat_range="conv"`: every convolution of the network (a prunable
            group's producers together, other conv layers one by one, in scope
            or not), no Dense layer.
        cost: The plan's `CostModel`; `keep_counts`, `macs_reduction` and
            `latency_reduction` ask it.
        features: With calibration data (`plan_pruning(..., data=...)`), a
            function from group names and a number of inputs to the linear CKA
            of the groups' feature maps on those inputs
            (`hos_keras.calibration.linear_cka`); else `None`.
    """

    layers: Sequence[str]
    channels: Mapping[str, int]
    scores: Mapping[str, np.ndarray]
    weights: Callable[[str], np.ndarray]
    reference: Sequence[str]
    cost: CostModel
    features: Callable[[Sequence[str], int], np.ndarray] | None = None

    def keep_counts(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """Channels kept per layer for these ratios (`CostModel.keep_counts`)."""
        return self.cost.keep_counts(ratios)

    def macs_reduction(self, counts: Mapping[str, int]) -> float:
        """Fraction of MACs removed at these counts."""
        return self.cost.macs_reduction(counts)

    @property
    def latency_reduction(self) -> Callable[[Mapping[str, int]], float] | None:
        """The function from counts to the fraction of predicted latency
        removed, or `None` when the planner has no latency model."""
        return self.cost.latency_reduction if self.cost.has_latency else None


@dataclasses.dataclass
class Knob:
    """The one setting of an allocation a target search turns.

    `TargetAllocation` bisects `value` between `low` and `high` for the least
    pruning that reaches its target; any allocation that returns a `Knob` from
    `knob(context)` can be a target's base, including registered ones.

    Attributes:
        name: The setting's name, reported in the plan's details (e.g.
            `"coefficient"`).
        low: Smallest value searched.
        high: Largest value searched.
        ratios: Function from a value to the ratio of every layer.
        prunes_more: `"high"` if larger values prune more, `"low"` otherwise.
        integer: Whether the value is an integer (searched exactly).
        log: Whether to bisect on the log of the value (`low > 0`).
        steps: Bisection steps of a real-valued knob.
        statistics: The layer statistic T of each layer, if the allocation has
            one (reported in the plan).
        details: Function from the value found to what the plan's details
            record about it. Defaults to `{name: value}`.
    """

    name: str
    low: float
    high: float
    ratios: Callable[[float], dict[str, float]]
    prunes_more: str = "high"
    integer: bool = False
    log: bool = False
    steps: int = 60
    statistics: dict[str, float] | None = None
    details: Callable[[float], dict] | None = None


@dataclasses.dataclass
class Allocated:
    """Result of an allocation: a ratio per layer and, if any, the statistic T."""

    ratios: dict[str, float]
    statistics: dict[str, float] | None = None
    details: dict = dataclasses.field(default_factory=dict)


class Allocation:
    """Base class: subclasses implement `allocate(context) -> Allocated`."""

    name = "allocation"

    def allocate(self, context: AllocationContext) -> Allocated:
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments, for the plan's record."""
        return {}

    @classmethod
    def from_config(cls, config: dict) -> Allocation:
        """The allocation `get_config` describes: `cls(**config)`."""
        return cls(**config)

    def knob(self, context: AllocationContext) -> Knob | None:
        """The setting a target search turns to reach a MACs or latency target
        with this allocation, or `None` if it has none (the default)."""
        return None

    def retarget(
        self,
        *,
        macs_reduction: float | None = None,
        latency_reduction: float | None = None,
    ) -> Allocation:
        """The same allocation asked for another reduction (one of the two).

        Allocations that take a target (`"target"`, `"itpruner"`) implement it;
        the planner's measured latency search uses it to re-plan.

        Raises:
            InvalidArgumentError: for an allocation without a target.
        """
        raise InvalidArgumentError(
            f"allocation={self.name!r} takes no MACs or latency target; use "
            "allocation='target' (any base) or 'itpruner'."
        )


def _check_ratio(name: str, value) -> float:
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"Received {name}={value!r}; pass a number in [0, 1)."
        ) from None
    if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise InvalidArgumentError(
            f"Received {name}={value!r}; a pruning ratio must be in [0, 1) "
            "(1 would remove every channel)."
        )
    return ratio


def _check_coefficient(coefficient) -> float:
    try:
        value = float(coefficient)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise InvalidArgumentError(
            f"Received coefficient={coefficient!r}; pass a finite number > 0 (the "
            "paper uses 2.0 to 8.7; the largest ratio is about ceil(10 / c) / 10)."
        )
    return value


def eq9_ratios(
    statistics: Mapping[str, float],
    t_min: float,
    t_max: float,
    coefficient: float,
    step: float = 0.1,
    max_ratio: float = 0.9,
) -> dict[str, float]:
    """The paper's eq. 9: ratio = ceil((T - T_min) / (c (T_max - T_min)) / step) * step.

    Args:
        statistics: Layer statistic T per layer (larger = more Gaussian).
        t_min: Smallest T over the reference layers.
        t_max: Largest T over the reference layers.
        coefficient: c > 0; larger values prune less.
        step: Rounding step of the ratios. Defaults to `0.1`, as the paper.
        max_ratio: Upper bound of any ratio. Defaults to `0.9`.

    Returns:
        Ratio per layer, each in [0, max_ratio].
    """
    span = t_max - t_min
    ratios = {}
    for name, value in statistics.items():
        position = 0.0 if span <= 0 else max(0.0, (value - t_min) / span)
        steps = math.ceil(position / (coefficient * step) - 1e-9)
        ratios[name] = float(min(max_ratio, max(0, steps) * step))
    return ratios


class StatisticAllocation(Allocation):
    """Shared logic of the layer-statistic allocations P1-P3 (the paper's eq. 9).

    Args:
        coefficient: The coefficient c of eq. 9; larger prunes less. Defaults to
            `3.7` (the paper's ResNet-56 value).
        step: Rounding step of the ratios. Defaults to `0.1`.
        max_ratio: Upper bound of any layer's ratio. Defaults to `0.9`.
        stat_range: `"conv"` to take T_min/T_max over every convolution layer of
            the network and no Dense layer (as the paper), or `"prunable"` for the
            groups the allocation prunes. A model without convolutions uses its
            prunable groups either way. Defaults to `"conv"`.
    """

    def __init__(
        self,
        coefficient: float = 3.7,
        step: float = 0.1,
        max_ratio: float = 0.9,
        stat_range: str = "conv",
    ):
        self.coefficient = _check_coefficient(coefficient)
        if not 0 < float(step) <= 1:
            raise InvalidArgumentError(
                f"Received step={step!r}; pass a rounding step in (0, 1]."
            )
        self.step = float(step)
        self.max_ratio = _check_ratio("max_ratio", max_ratio)
        if stat_range not in ("conv", "prunable"):
            raise InvalidArgumentError(
                f"Received stat_range={stat_range!r}; pass 'conv' or 'prunable'."
            )
        self.stat_range = stat_range

    def layer_statistic(self, weights: np.ndarray) -> float:
        """T of one layer from all of its weights; larger means more Gaussian."""
        raise NotImplementedError

    def statistics(self, context: AllocationContext) -> tuple[dict, float, float]:
        """T for the prunable layers, and T_min/T_max over `stat_range`."""
        span = list(context.layers)
        if self.stat_range == "conv" and context.reference:
            span = list(context.reference)
        names = list(dict.fromkeys([*context.layers, *span]))
        values = {name: self.layer_statistic(context.weights(name)) for name in names}
        finite = [values[n] for n in span if math.isfinite(values[n])]
        if not finite:
            finite = [0.0]
        t_min, t_max = min(finite), max(finite)
        # A constant (zero-variance) layer has no finite statistic: it is as
        # uninformative as it gets, so it is treated as the most Gaussian.
        values = {k: (v if math.isfinite(v) else t_max) for k, v in values.items()}
        return {k: values[k] for k in context.layers}, t_min, t_max

    def ratios_for(self, statistics, t_min, t_max, coefficient) -> dict[str, float]:
        return eq9_ratios(
            statistics, t_min, t_max, coefficient, self.step, self.max_ratio
        )

    def knob(self, context: AllocationContext) -> Knob:
        """Eq. 9's coefficient c, searched on a log scale in [1e-3, 1e3]."""
        statistics, t_min, t_max = self.statistics(context)
        return Knob(
            "coefficient",
            1e-3,
            1e3,
            lambda c: self.ratios_for(statistics, t_min, t_max, c),
            prunes_more="low",
            log=True,
            statistics=statistics,
            details=lambda c: {"coefficient": c, "t_min": t_min, "t_max": t_max},
        )

    def allocate(self, context: AllocationContext) -> Allocated:
        statistics, t_min, t_max = self.statistics(context)
        ratios = self.ratios_for(statistics, t_min, t_max, self.coefficient)
        return Allocated(
            ratios,
            statistics,
            {"t_min": t_min, "t_max": t_max, "coefficient": self.coefficient},
        )

    def get_config(self) -> dict:
        return {
            "coefficient": self.coefficient,
            "step": self.step,
            "max_ratio": self.max_ratio,
            "stat_range": self.stat_range,
        }


class ShapiroWilkAllocation(StatisticAllocation):
    """P1: T is the Shapiro-Wilk W of all of a layer's weights.

    W near 1 means Gaussian-looking weights, which are pruned more (eq. 9).
    Chatzikonstantinou et al., CVPRW 2020, sec. 3.2; Shapiro & Wilk, Biometrika 1965.
    W is computed on every weight of the layer (scipy's p-value is inexact beyond
    5,000 samples, but W is not used as a test here); pass `max_samples` to use a
    seeded subsample for speed instead.

    Args:
        coefficient: See `StatisticAllocation`. Defaults to `3.7`.
        step: Defaults to `0.1`.
        max_ratio: Defaults to `0.9`.
        stat_range: Defaults to `"conv"`.
        max_samples: Subsample size per layer, or `None` for all weights. Defaults
            to `None`.
        seed: Seed of the subsample. Defaults to `0`.

    Example:

    ```python
    plan = hos_keras.plan_pruning(model, allocation="shapiro", coefficient=3.7)
    ```
    """

    name = "shapiro"

    def __init__(
        self,
        coefficient=3.7,
        step=0.1,
        max_ratio=0.9,
        stat_range="conv",
        max_samples=None,
        seed=0,
    ):
        super().__init__(coefficient, step, max_ratio, stat_range)
        self.max_samples = max_samples
        self.seed = seed

    def layer_statistic(self, weights):
        return stats.shapiro_wilk(weights, self.max_samples, self.seed)

    def get_config(self):
        return {
            **super().get_config(),
            "max_samples": self.max_samples,
            "seed": self.seed,
        }


class JarqueBeraAllocation(StatisticAllocation):
    """P2: T = -log10(JB) of all of a layer's weights.

    A small Jarque-Bera statistic means Gaussian-looking weights, pruned more. The
    paper writes T = 1 - log10(JB) / a with a per-network constant a; eq. 9 only
    sees (T - T_min) / (T_max - T_min), in which a and the offset cancel, so they
    are left out. Chatzikonstantinou et al., CVPRW 2020, sec. 3.2; Jarque & Bera 1987.

    Args:
        coefficient, step, max_ratio, stat_range: See `StatisticAllocation`.
    """

    name = "jarque_bera"

    def layer_statistic(self, weights):
        jb = float(stats.jarque_bera(weights).statistic)
        if not math.isfinite(jb):
            return float("nan")
        return -math.log10(max(jb, 1e-300))


class CumulantAllocation(StatisticAllocation):
    """P3: T = log10(1e13 * |k3 * k4|) / 21 of all of a layer's weights.

    The authors' formula (chatzikon/DNN-COMPRESSION,
    cifar/step1/cifar10/res56prune_normality.py, strategy P3): a layer whose
    weights have a LARGER |k3 * k4| - further from Gaussian - gets a larger T and
    loses more channels, the opposite direction to P1 and P2. The scale 1e13 and
    the divisor 21 cancel in eq. 9 (only (T - T_min) / (T_max - T_min) counts);
    they are kept so that T matches the reference's values.
    Chatzikonstantinou et al., CVPRW 2020, sec. 3.2.

    Args:
        coefficient, step, max_ratio, stat_range: See `StatisticAllocation`.
    """

    name = "k34"

    def layer_statistic(self, weights):
        sums = stats.PowerSums.from_array(weights)
        if sums.count < 4 or bool(sums.degenerate):
            return float("nan")
        value = abs(float(sums.kstat(3) * sums.kstat(4)))
        return math.log10(1e13 * max(value, 1e-300)) / 21.0


class GlobalAllocation(Allocation):
    """P4: remove the lowest-scoring `fraction` of all prunable filters together.

    Chatzikonstantinou et al., CVPRW 2020, sec. 3.2 (the reference uses 0.32).
    Scores of different layers are compared directly, as in the paper; note that
    cumulants scale with the weights' spread (k3 * k4 with sigma**7), so layers with
    small weights lose more under the HOS criteria.

    Args:
        fraction: Share of all prunable filters to remove, in [0, 1). Defaults to
            `0.32`.
    """

    name = "global"

    def __init__(self, fraction: float = 0.32):
        self.fraction = _check_ratio("fraction", fraction)

    def removed_counts(self, context: AllocationContext, n_removed: int) -> dict:
        names = list(context.layers)
        all_scores = np.concatenate([context.scores[n] for n in names])
        owners = np.concatenate(
            [np.full(context.channels[n], i) for i, n in enumerate(names)]
        )
        order = np.argsort(all_scores, kind="stable")[:n_removed]
        counts = np.bincount(owners[order], minlength=len(names))
        return {name: int(counts[i]) for i, name in enumerate(names)}

    def total(self, context: AllocationContext) -> int:
        return int(sum(context.channels[n] for n in context.layers))

    def ratios_for_count(self, context, n_removed) -> dict[str, float]:
        removed = self.removed_counts(context, n_removed)
        return {n: removed[n] / context.channels[n] for n in context.layers}

    def knob(self, context: AllocationContext) -> Knob:
        """The number of filters removed, searched exactly."""
        total = self.total(context)
        return Knob(
            "filters_removed",
            0,
            total - 1,
            lambda k: self.ratios_for_count(context, int(k)),
            integer=True,
            details=lambda k: {"fraction": k / total},
        )

    def allocate(self, context: AllocationContext) -> Allocated:
        n_removed = math.floor(self.fraction * self.total(context) + 1e-9)
        return Allocated(
            self.ratios_for_count(context, n_removed),
            details={"fraction": self.fraction},
        )

    def get_config(self):
        return {"fraction": self.fraction}


class FixedAllocation(Allocation):
    """P5: given ratios, per layer or per stage.

    Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets",
    ICLR 2017 (e.g. ResNet-56 stages [0.8, 0.5, 0.3] in the reference code).

    Args:
        ratio: One ratio for every prunable layer, or a mapping from layer names or
            shell-style patterns (`"stage1_*"`) to ratios; the first matching key in
            the mapping's order wins, an exact name before any pattern, and layers
            that match nothing keep all channels. Defaults to `0.3`.

    Raises:
        InvalidArgumentError: for a ratio outside [0, 1).

    Example:

    ```python
    plan = hos_keras.plan_pruning(
        model, allocation="fixed",
        ratio={"stage1_*": 0.8, "stage2_*": 0.5, "stage3_*": 0.3},
        skip=["stage3_block9_conv1"],  # a plan_pruning option
    )
    ```
    """

    name = "fixed"

    def __init__(self, ratio: float | Mapping[str, float] = 0.3):
        if isinstance(ratio, Mapping):
            self.ratio = {
                str(k): _check_ratio(f"ratio[{k!r}]", v) for k, v in ratio.items()
            }
        else:
            self.ratio = _check_ratio("ratio", ratio)

    def ratio_of(self, name: str) -> float:
        if not isinstance(self.ratio, dict):
            return self.ratio
        if name in self.ratio:
            return self.ratio[name]
        for pattern, value in self.ratio.items():
            if fnmatch.fnmatchcase(name, pattern):
                return value
        return 0.0

    def knob(self, context: AllocationContext) -> Knob:
        """One uniform ratio, up to the given ratio when it is a positive number
        (else 0.99)."""
        cap = self.ratio if isinstance(self.ratio, float) and self.ratio > 0 else 0.99
        return Knob(
            "ratio",
            0.0,
            cap,
            lambda r: {n: r for n in context.layers},
            steps=40,
        )

    def allocate(self, context: AllocationContext) -> Allocated:
        return Allocated({name: self.ratio_of(name) for name in context.layers})

    def get_config(self):
        return {"ratio": self.ratio}


class TargetAllocation(Allocation):
    """Reach a requested MACs or latency reduction by searching the base's knob.

    For `base` in `"shapiro"`, `"jarque_bera"`, `"k34"` it searches the coefficient
    c of eq. 9 (bisection on log c); for `"global"` the number of filters removed
    (exact binary search); for `"fixed"` one uniform ratio. The result is the
    least pruning that removes at least `macs_reduction` of the model's MACs, or
    at least `latency_reduction` of its predicted latency on a runtime (see
    `hos_keras.latency`); the achieved reduction is reported in the plan. Ratios
    move in steps (0.1 for eq. 9), so the achieved value can exceed the request.
    The criterion still decides which channels go; the target decides how many.

    Args:
        macs_reduction: Fraction of MACs to remove, in (0, 1). E.g. `0.5` for "50%
            fewer MACs". Defaults to `0.5` unless `latency_reduction` is given.
        base: Allocation whose knob is searched. Defaults to `"shapiro"`.
        latency_reduction: Fraction of the latency to remove, in (0, 1): `0.5`
            asks for 2x faster. Give this or `macs_reduction`, not both. Defaults
            to `None`.
        **base_options: Other arguments of the base allocation (e.g. `step`,
            `max_ratio`).

    Raises:
        InvalidArgumentError: for a reduction outside (0, 1), both targets, or an
            unknown base.
        UnreachableTargetError: at allocation time, if even the most aggressive
            setting cannot reach the target (the message gives the largest
            reachable reduction).
    """

    name = "target"

    def __init__(
        self,
        macs_reduction: float | None = None,
        base: str = "shapiro",
        latency_reduction: float | None = None,
        **base_options,
    ):
        if macs_reduction is not None and latency_reduction is not None:
            raise InvalidArgumentError(
                f"Received macs_reduction={macs_reduction!r} and latency_reduction="
                f"{latency_reduction!r}; pass one target."
            )
        if latency_reduction is not None:
            self.metric, argument, value = (
                "latency",
                "latency_reduction",
                latency_reduction,
            )
        else:
            self.metric, argument = "macs", "macs_reduction"
            value = 0.5 if macs_reduction is None else macs_reduction
        target = _check_fraction(
            argument,
            value,
            f", e.g. 0.5 for 50% fewer {'MACs' if self.metric == 'macs' else 'ms'}",
        )
        if base not in _knob_names():
            raise UnknownNameError(
                f"Received base={base!r}; pass one of {_knob_names()} (the "
                "allocations with a knob to search)."
            )
        self.target = target
        self.macs_reduction = target if self.metric == "macs" else None
        self.latency_reduction = target if self.metric == "latency" else None
        self.base = base
        self.base_options = dict(base_options)
        options = dict(base_options)
        if base == "fixed":
            options.setdefault("ratio", 0.0)
        self._base = get_allocation(base, **options)

    def _reduction(self, context, ratios) -> float:
        counts = context.keep_counts(ratios)
        if self.metric == "latency":  # the cost model says if it cannot
            return context.cost.latency_reduction(counts)
        return context.macs_reduction(counts)

    def allocate(self, context: AllocationContext) -> Allocated:
        knob = self._base.knob(context)
        value = self._search(context, knob)
        details = knob.details(value) if knob.details else {knob.name: value}
        return self._result(
            context, knob.ratios(value), knob.statistics, {**details, "base": self.base}
        )

    def _search(self, context, knob: Knob) -> float:
        """The knob's value of least pruning that reaches the target."""

        def meets(value) -> bool:
            return self._reduction(context, knob.ratios(value)) >= self.target

        more = knob.high if knob.prunes_more == "high" else knob.low
        if not meets(more):
            self._unreachable(context, knob.ratios(more))
        if knob.integer:  # the smallest (or largest) integer that meets it
            lo, hi = int(knob.low), int(knob.high)
            while lo < hi:
                if knob.prunes_more == "high":
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if meets(mid) else (mid + 1, hi)
                else:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if meets(mid) else (lo, mid - 1)
            return lo
        scale, unscale = (math.log, math.exp) if knob.log else (float, float)
        lo, hi = scale(knob.low), scale(knob.high)
        for _ in range(knob.steps):
            mid = 0.5 * (lo + hi)
            if knob.prunes_more == "high":
                lo, hi = (lo, mid) if meets(unscale(mid)) else (mid, hi)
            else:
                lo, hi = (mid, hi) if meets(unscale(mid)) else (lo, mid)
        return unscale(hi if knob.prunes_more == "high" else lo)

    def _result(self, context, ratios, statistics, details) -> Allocated:
        details["achieved_macs_reduction"] = context.macs_reduction(
            context.keep_counts(ratios)
        )
        details[f"requested_{self.metric}_reduction"] = self.target
        if self.metric == "latency":
            details["predicted_latency_reduction"] = self._reduction(context, ratios)
        return Allocated(ratios, statistics, details)

    def _unreachable(self, context, ratios):
        best = self._reduction(context, ratios)
        what = "MACs" if self.metric == "macs" else "predicted latency"
        raise UnreachableTargetError(
            f"Cannot reach {self.metric}_reduction={self.target}: with base="
            f"{self.base!r} the most aggressive setting removes {best:.1%} of the "
            f"{what}. Ask for less, raise max_ratio, or use base='global'."
        )

    def retarget(self, *, macs_reduction=None, latency_reduction=None):
        return TargetAllocation(
            macs_reduction=macs_reduction,
            latency_reduction=latency_reduction,
            base=self.base,
            **self.base_options,
        )

    def get_config(self):
        return {
            f"{self.metric}_reduction": self.target,
            "base": self.base,
            **self.base_options,
        }


class ITPrunerAllocation(Allocation):
    """Layer-wise keep fractions from the layers' information redundancy.

    ITPruner (Zheng, Sun, Zhang, Lin, Zhong, Ji, "An Information Theory-inspired
    Strategy for Automatic Network Pruning"): a layer whose feature maps say what
    the other layers' say can lose more channels. On the calibration images
    (`plan_pruning(..., data=...)`), the normalised HSIC with linear kernels
    (linear CKA) between every two groups' maps gives each group
    `s_i = sum_j nHSIC_ij` and an importance `alpha_i = exp(-beta * s_i)`; the
    keep fractions x maximise `sum_i alpha_i x_i` subject to the model's MACs
    removing at least `macs_reduction`, with `min_keep <= x_i <= 1`, solved by
    scipy's SLSQP on the exact MACs, which are a quadratic function of the
    groups' widths (its coefficients are read off the cost model, and checked).
    The fractions are then rounded down to whole channels (with `min_channels`
    and `round_to`), and, if the rounding left the target unmet, the least
    important groups give up channels one at a time until it is met.

    With `latency_reduction` instead, the MACs budget is the smallest one (found
    by bisection) whose solution removes that fraction of the latency predicted
    by the runtime's latency model (`plan_pruning(..., runtime=...)`, see
    `hos_keras.latency`); the planner then measures the plan as for
    `allocation="target"`.

    The maps of a group are its first producer's outputs on the first `images`
    calibration inputs.

    Args:
        macs_reduction: Fraction of the MACs to remove, in (0, 1). Defaults to
            `0.5` unless `latency_reduction` is given.
        beta: The temperature of the importance. Defaults to `1.0`.
        min_keep: Smallest keep fraction of any group. Defaults to `0.1`.
        images: Calibration inputs the maps are taken on. Defaults to `64`.
        latency_reduction: Fraction of the predicted latency to remove, in
            (0, 1): `0.5` asks for 2x faster. Give this or `macs_reduction`, not
            both. Defaults to `None`.

    Raises:
        InvalidArgumentError: for values out of range or both targets; at
            allocation time without calibration data, or without a latency
            model for `latency_reduction`.
        UnreachableTargetError: if even `min_keep` everywhere does not remove
            the requested reduction.

    Example:

    ```python
    plan = hos_keras.plan_pruning(
        model, "l1", "itpruner", macs_reduction=0.5, data=(x_cal, y_cal)
    )
    ```
    """

    name = "itpruner"
    needs_data = True

    def __init__(
        self,
        macs_reduction: float | None = None,
        beta: float = 1.0,
        min_keep: float = 0.1,
        images: int = 64,
        latency_reduction: float | None = None,
    ):
        if macs_reduction is not None and latency_reduction is not None:
            raise InvalidArgumentError(
                f"Received macs_reduction={macs_reduction!r} and latency_reduction="
                f"{latency_reduction!r}; pass one target."
            )
        self.latency_reduction = (
            None
            if latency_reduction is None
            else _check_fraction("latency_reduction", latency_reduction)
        )
        self.macs_reduction = (
            None
            if self.latency_reduction is not None
            else _check_fraction(
                "macs_reduction", 0.5 if macs_reduction is None else macs_reduction
            )
        )
        self.min_keep = _check_fraction("min_keep", min_keep)
        self.beta = check_real("beta", beta, 0.0)
        self.images = check_int("images", images)

    def allocate(self, context: AllocationContext) -> Allocated:
        from scipy import optimize

        if context.features is None:
            raise InvalidArgumentError(
                "allocation='itpruner' compares the layers' feature maps: pass "
                "calibration data, plan_pruning(..., data=(x, y))."
            )
        groups = [g for g in context.layers if context.channels[g] > 1]
        if not groups:
            return Allocated({g: 0.0 for g in context.layers})
        if self.latency_reduction is not None and context.latency_reduction is None:
            raise InvalidArgumentError(
                "allocation='itpruner' with latency_reduction needs a latency "
                "model; plan with hos_keras.plan_pruning(..., runtime=...) or pass "
                "latency_model=."
            )
        similarity = context.features(groups, self.images)
        redundancy = similarity.sum(axis=1)
        alpha = np.exp(-self.beta * redundancy)
        widths = np.array([context.channels[g] for g in groups], dtype=np.float64)
        reduction = _QuadraticReduction(context, groups, widths)
        low = np.maximum(self.min_keep, 1.0 / widths)
        weight = alpha / alpha.max()  # the same optimum, on a scale SLSQP resolves

        def solve(budget: float):
            start = np.clip(np.full(len(groups), 1.0 - budget), low, 1.0)
            result = optimize.minimize(
                lambda x: -float(weight @ x),
                start,
                jac=lambda x: -weight,
                bounds=list(zip(low, np.ones(len(groups)), strict=True)),
                constraints=[
                    {
                        "type": "ineq",
                        "fun": lambda x: reduction(x) - budget,
                        "jac": reduction.gradient,
                    }
                ],
                method="SLSQP",
                options={"maxiter": 500, "ftol": 1e-10},
            )
            keep = np.clip(result.x, low, 1.0)
            ratios = {g: float(1.0 - k) for g, k in zip(groups, keep, strict=True)}
            ratios = self._meet(context, ratios, alpha, groups, budget)
            ratios.update({g: 0.0 for g in context.layers if g not in ratios})
            return ratios, keep, str(result.message)

        most = reduction(low)
        details = {"beta": self.beta}
        if self.latency_reduction is None:
            budget = self.macs_reduction
            if most < budget - 1e-9:
                self._unreachable("macs_reduction", budget, most, "MACs")
            ratios, keep, message = solve(budget)
        else:
            budget, (ratios, keep, message), predicted = self._latency_budget(
                context, solve, most
            )
            details["requested_latency_reduction"] = self.latency_reduction
            details["predicted_latency_reduction"] = predicted
        counts = context.keep_counts(ratios)
        details.update(
            {
                "macs_reduction_target": budget,
                "achieved_macs_reduction": context.macs_reduction(counts),
                "redundancy": dict(zip(groups, redundancy.tolist(), strict=True)),
                "keep_fractions": dict(zip(groups, keep.tolist(), strict=True)),
                "solver": message,
            }
        )
        return Allocated(
            ratios,
            statistics={g: float(a) for g, a in zip(groups, alpha, strict=True)},
            details=details,
        )

    def _latency_budget(self, context, solve, most):
        """The smallest MACs budget (to 0.5%) whose solution's predicted latency
        reduction meets the target: `(budget, solution, predicted reduction)`."""
        target = self.latency_reduction

        def predicted(solution) -> float:
            return context.latency_reduction(context.keep_counts(solution[0]))

        top = solve(most)
        if predicted(top) < target:
            self._unreachable(
                "latency_reduction", target, predicted(top), "predicted latency"
            )
        lo, hi, best = 0.0, most, (most, top, predicted(top))
        while hi - lo > 0.005:
            mid = 0.5 * (lo + hi)
            solution = solve(mid)
            reached = predicted(solution)
            if reached >= target:
                hi, best = mid, (mid, solution, reached)
            else:
                lo = mid
        return best

    def _unreachable(self, argument, target, best, what):
        raise UnreachableTargetError(
            f"Cannot reach {argument}={target} with allocation='itpruner': keeping "
            f"min_keep={self.min_keep} of every group removes {best:.1%} of the "
            f"{what}. Lower min_keep or ask for less."
        )

    def _meet(self, context, ratios, alpha, groups, budget) -> dict[str, float]:
        """Removes channels from the least important groups until the rounded
        widths remove `budget` of the MACs."""
        order = [groups[i] for i in np.argsort(alpha, kind="stable")]
        for _ in range(sum(context.channels[g] for g in groups)):
            counts = context.keep_counts(ratios)
            if context.macs_reduction(counts) >= budget - 1e-12:
                break
            for g in order:
                if counts[g] > 1:
                    ratios[g] = 1.0 - (counts[g] - 1) / context.channels[g]
                    break
            else:
                break
        return ratios

    def retarget(self, *, macs_reduction=None, latency_reduction=None):
        return ITPrunerAllocation(
            macs_reduction=macs_reduction,
            beta=self.beta,
            min_keep=self.min_keep,
            images=self.images,
            latency_reduction=latency_reduction,
        )

    def get_config(self):
        target = (
            {"macs_reduction": self.macs_reduction}
            if self.latency_reduction is None
            else {"latency_reduction": self.latency_reduction}
        )
        return {
            **target,
            "beta": self.beta,
            "min_keep": self.min_keep,
            "images": self.images,
        }


class _QuadraticReduction:
    """The fraction of MACs removed as a quadratic function of keep fractions.

    A layer's MACs are a product of its input and output widths (or one of them),
    so the model's MACs are a quadratic polynomial of the groups' widths. Its
    coefficients come from the exact cost at whole channel counts: per group, at
    its full width and one and two channels less; per pair of groups, at both one
    channel less (zero for groups no layer joins).
    """

    def __init__(self, context, groups, widths):
        self.widths = widths
        n = len(groups)
        full = {g: int(w) for g, w in zip(groups, widths, strict=True)}

        def removed(drops: dict[int, int]) -> float:
            counts = dict(full)
            for i, d in drops.items():
                counts[groups[i]] = full[groups[i]] - d
            return context.macs_reduction(counts)

        # In units of channels removed d: R = r0 + sum_i (u_i d_i + v_i d_i^2)
        # + sum_{i<j} w_ij d_i d_j.
        r0 = removed({})
        one = np.array([removed({i: 1}) for i in range(n)])
        two = np.array(
            [removed({i: 2}) if widths[i] > 2 else 2 * one[i] - r0 for i in range(n)]
        )
        v = (two - 2 * one + r0) / 2
        u = one - r0 - v
        w = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                w[i, j] = removed({i: 1, j: 1}) - one[i] - one[j] + r0
        self.r0, self.u, self.v, self.w = r0, u, v, w + w.T

    def __call__(self, keep: np.ndarray) -> float:
        d = self.widths * (1.0 - np.asarray(keep, dtype=np.float64))
        return float(self.r0 + self.u @ d + self.v @ (d * d) + d @ self.w @ d / 2)

    def gradient(self, keep: np.ndarray) -> np.ndarray:
        d = self.widths * (1.0 - np.asarray(keep, dtype=np.float64))
        return -self.widths * (self.u + 2 * self.v * d + self.w @ d)


def _check_fraction(name: str, value, example: str = "") -> float:
    """`value` as a float in (0, 1), or an error naming `name` (and `example`)."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0.0 < fraction < 1.0:
        raise InvalidArgumentError(
            f"Received {name}={value!r}; pass a fraction in (0, 1){example}."
        )
    return fraction


_ALLOCATIONS = {
    cls.name: cls
    for cls in (
        ShapiroWilkAllocation,
        JarqueBeraAllocation,
        CumulantAllocation,
        GlobalAllocation,
        FixedAllocation,
        TargetAllocation,
        ITPrunerAllocation,
    )
}


def allocation_names() -> list[str]:
    """The names `get_allocation` and `plan_pruning` accept."""
    return sorted(_ALLOCATIONS)


def _knob_names() -> list[str]:
    """The allocations a `TargetAllocation` can search (they have a knob)."""
    return sorted(n for n, c in _ALLOCATIONS.items() if c.knob is not Allocation.knob)


def register_allocation(cls: type[Allocation]) -> type[Allocation]:
    """Adds an `Allocation` subclass under its `name`, so that `plan_pruning`,
    `compress` and `get_allocation` find it by name; one that implements
    `knob` can also be the base of a MACs or latency target.

    Usable as a class decorator.

    Args:
        cls: A subclass of `Allocation` with a class attribute `name` not taken
            yet.

    Returns:
        `cls`.

    Raises:
        InvalidArgumentError: if `cls` is not an `Allocation` subclass, or its
            name is taken.

    Example:

    ```python
    @hos_keras.register_allocation
    class Half(hos_keras.Allocation):
        name = "half"

        def __init__(self, share=0.5):
            self.share = share

        def allocate(self, context):
            return hos_keras.allocation.Allocated(
                {n: self.share for n in context.layers})

        def knob(self, context):
            return hos_keras.allocation.Knob(
                "share", 0.0, 0.9, lambda s: {n: s for n in context.layers})

    plan = hos_keras.plan_pruning(model, allocation="target", base="half",
                                  macs_reduction=0.4)
    ```
    """
    if not (isinstance(cls, type) and issubclass(cls, Allocation)):
        raise InvalidArgumentError(
            f"Received {cls!r}; pass a subclass of hos_keras.Allocation."
        )
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name == Allocation.name:
        raise InvalidArgumentError(
            f"{cls.__name__} has no name of its own; give it a class attribute "
            "name = '...'."
        )
    if name in _ALLOCATIONS:
        raise InvalidArgumentError(
            f"An allocation named {name!r} exists already; choose another name."
        )
    _ALLOCATIONS[name] = cls
    return cls


def get_allocation(allocation="shapiro", **options) -> Allocation:
    """Makes an allocation from its name and options (or passes an instance through).

    Args:
        allocation: A name from `allocation_names()` or an `Allocation` instance.
            Defaults to `"shapiro"`.
        **options: Constructor arguments of the named allocation.

    Returns:
        An `Allocation`.

    Raises:
        UnknownNameError: for an unknown name (the message lists the valid ones).
        ArgumentTypeError: for options the allocation does not take.
    """
    if isinstance(allocation, Allocation):
        if options:
            raise InvalidArgumentError(
                f"Options {sorted(options)} were given with an Allocation instance; "
                "pass them to its constructor instead."
            )
        return allocation
    if not isinstance(allocation, str) or allocation not in _ALLOCATIONS:
        raise UnknownNameError(
            f"Unknown allocation {allocation!r}; valid names are "
            f"{allocation_names()}, or pass an Allocation instance."
        )
    cls = _ALLOCATIONS[allocation]
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as error:
        raise ArgumentTypeError(
            f"Allocation {allocation!r} got unexpected options {sorted(options)}: "
            f"{error}."
        ) from None
    return cls(**options)


def for_target(
    allocation="shapiro",
    macs_reduction: float | None = None,
    latency_reduction: float | None = None,
    *,
    names: tuple[str, str] = ("macs_reduction", "latency_reduction"),
    **options,
) -> Allocation:
    """The allocation that meets a MACs or latency target with `allocation`.

    The one place where compress, the CLI and the tuner turn "this allocation,
    this target" into an allocation: without a target, `allocation` itself;
    `"itpruner"` allocates for the target itself; any other name (or
    `"target"`, over `base`, `"shapiro"` by default) becomes a
    `TargetAllocation` that searches its knob.

    Args:
        allocation: A name from `allocation_names()`, or an `Allocation`
            instance (only without a target). Defaults to `"shapiro"`.
        macs_reduction: Fraction of MACs to remove. Defaults to `None`.
        latency_reduction: Fraction of the latency to remove. Defaults to
            `None`.
        names: The two targets' names in the caller's words, for messages
            (e.g. `("--target", "--latency-target")`).
        **options: Options of the allocation (of the base, with a target).

    Returns:
        An `Allocation`.

    Raises:
        InvalidArgumentError: for both targets, or a target with an instance.
        UnknownNameError: for an unknown name or a base without a knob.
    """
    given = {
        k: v
        for k, v in (
            ("macs_reduction", macs_reduction),
            ("latency_reduction", latency_reduction),
        )
        if v is not None
    }
    if len(given) == 2:
        raise InvalidArgumentError(
            f"Received {names[0]}={macs_reduction!r} and {names[1]}="
            f"{latency_reduction!r}; pass one: a share of MACs or a share of latency "
            "to remove."
        )
    if not given:
        return get_allocation(allocation, **options)
    if isinstance(allocation, Allocation):
        which = names[0] if macs_reduction is not None else names[1]
        raise InvalidArgumentError(
            f"Received {which}={next(iter(given.values()))!r} with allocation "
            f"{allocation.name!r}, an instance; with a target pass the base "
            "allocation by name (e.g. 'shapiro'), or give the instance its target."
        )
    if allocation == ITPrunerAllocation.name:  # it allocates for its own target
        return get_allocation(allocation, **given, **options)
    if allocation == TargetAllocation.name:
        return TargetAllocation(**given, **options)
    return TargetAllocation(base=allocation, **given, **options)
