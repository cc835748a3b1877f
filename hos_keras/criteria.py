"""Filter criteria: one score per output channel; the lowest scores go first.

A criterion maps a `(weights_per_filter, n_filters)` matrix (see
`hos_keras.filter_matrix`) to `n_filters` finite scores. Any callable with
that signature is a criterion; the named ones live in a registry that users can add
to with `register_criterion`.

The higher-order-statistics (HOS) criteria follow Chatzikonstantinou et al., "Neural
Network Compression Using Higher-Order Statistics and Auxiliary Reconstruction
Losses", CVPRW 2020, section 3.1: a filter whose weights look Gaussian (cumulants of
order 3 and 4 near zero) carries little structure and is removed first.

Signed or absolute. The paper's code ranks the SIGNED value and removes the lowest,
so a strongly negative k3 * k4 goes before a Gaussian-looking one. The absolute
variants (`abs_k34`, ...) rank |score|, i.e. the distance from Gaussianity, which is
what the paper's argument describes. The signed ranking is the default because it is
what the published results were obtained with; `bench/accuracy.py` compares both.

Degenerate filters. A filter with zero variance (constant, e.g. an all-zero filter
left by earlier pruning) has undefined standardized moments. Every HOS criterion
gives it `LEAST_INFORMATIVE_SCORE`, a finite value below any real score, so it is
always the first to go and no NaN ever reaches a ranking.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import keras
import numpy as np

from hos_keras import stats
from hos_keras.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    UnknownNameError,
)

__all__ = [
    "LEAST_INFORMATIVE_SCORE",
    "ActivationCriterion",
    "BNScaleCriterion",
    "Criterion",
    "CumulantCriterion",
    "FPGMCriterion",
    "GroupCriterion",
    "GroupView",
    "HeadImportanceCriterion",
    "LAMPCriterion",
    "NormCriterion",
    "RandomCriterion",
    "criterion_names",
    "get_criterion",
    "register_criterion",
]

LEAST_INFORMATIVE_SCORE = -float(np.finfo(np.float32).max)
"""Score of a zero-variance filter under the HOS criteria (about -3.4e38)."""


class Criterion(Protocol):
    """What a criterion is: a callable from a filter matrix to one score per filter."""

    def __call__(self, filters: np.ndarray) -> np.ndarray:
        """Scores the columns of `filters`.

        Args:
            filters: `(weights_per_filter, n_filters)` array.

        Returns:
            float64 array of `n_filters` finite scores; lower means pruned first.
        """


_CUMULANT_STATISTICS = ("k3", "k4", "k34", "skew", "kurtosis", "skew_kurtosis")
_MIN_SAMPLES = {"k3": 3, "k4": 4, "k34": 4, "skew": 2, "kurtosis": 2}
_MIN_SAMPLES["skew_kurtosis"] = 2


@dataclasses.dataclass
class GroupView:
    """What a group criterion sees of one channel group.

    Every array of positions maps a layer's channel index to the group channel it
    carries (`-1`: a channel from outside the group, e.g. the other input of a
    concatenation).

    Attributes:
        name: The group's name (its first producer's).
        channels: Number of channels of the group; scores come one per channel.
        producers: Producer name -> `(filters, positions)`: its
            `(weights_per_filter, n_filters)` matrix (`hos_keras.filter_matrix`)
            and the group position of each filter.
        per_channel: Name -> `(layer, positions)` for the layers acting on each
            channel alone that the group's channels pass through
            (BatchNormalization, DepthwiseConv, PReLU, ...), positions indexed by
            the layer's channel.
        consumers: Name -> `(layer, positions)` for the layers whose input
            channels are the group's (their input rows lose slices), positions
            indexed by input channel.
        activations: Producer name -> `hos_keras.calibration.ChannelStatistics`
            of its output channels on the calibration data (`plan_pruning(...,
            data=...)`), for criteria whose `statistics` ask for them; else empty.
        macs_per_channel: MACs the model saves per channel of the group removed,
            for criteria with `needs_macs`; else `None`.
    """

    name: str
    channels: int
    producers: dict[str, tuple[np.ndarray, np.ndarray]]
    per_channel: dict[str, tuple[Any, np.ndarray]]
    consumers: dict[str, tuple[Any, np.ndarray]]
    activations: dict[str, Any] = dataclasses.field(default_factory=dict)
    macs_per_channel: float | None = None

    def gather(self, values: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Per group channel, the mean of `values` (one per layer channel) over
        the layer channels carrying it; NaN for group channels it does not carry.
        """
        values = np.asarray(values, dtype=np.float64)
        total = np.zeros(self.channels)
        count = np.zeros(self.channels)
        inside = positions >= 0
        np.add.at(total, positions[inside], values[inside])
        np.add.at(count, positions[inside], 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)


class GroupCriterion:
    """Base class of criteria that score a whole channel group at once.

    A plain criterion scores one producer's filter matrix and the planner
    combines the producers of a group (`group_reduction`). A group criterion
    instead gets a `GroupView`: the producers' filters, the per-channel layers
    (e.g. the BatchNormalization after a conv) and the consumers' input rows,
    all mapped to the group's channels, as Torch-Pruning's group importance
    does. Subclass it and implement `score_group`; `register_criterion` and
    `plan_pruning(criterion=...)` take it like any other criterion.

    Example:

    ```python
    class ConsumerL1(hos_keras.criteria.GroupCriterion):
        name = "consumer_l1"

        def score_group(self, group):
            # The L1 norm of the weights that read each channel.
            parts = [group.gather(np.abs(layer.kernel).sum(axis=(0, 1, 3)), at)
                     for layer, at in group.consumers.values()]
            return np.nanmean(parts, axis=0)
    ```
    """

    name = "group"
    # Calibration statistics the criterion reads from `GroupView.activations`
    # (see `hos_keras.calibration.STATISTICS`); empty for weight criteria.
    statistics: tuple[str, ...] = ()
    needs_macs = False

    def score_group(self, group: GroupView) -> np.ndarray:
        """One finite score per channel of `group`; the lowest go first."""
        raise NotImplementedError

    def __call__(self, filters: np.ndarray) -> np.ndarray:
        raise ArgumentTypeError(
            f"Criterion {self.name!r} scores whole channel groups "
            "(GroupCriterion.score_group); use it through plan_pruning, not on a "
            "single filter matrix."
        )


class BNScaleCriterion(GroupCriterion):
    """Scores channels by |gamma| of the BatchNormalization they pass through.

    Network slimming (Liu, Li, Shen, Huang, Yan, Zhang, "Learning Efficient
    Convolutional Networks through Network Slimming", ICCV 2017): the scale of a
    channel's batch normalization says how much it contributes. A channel
    normalized several times (a residual stream) gets the mean of its |gamma|.
    Groups that pass through no BatchNormalization (e.g. Dense layers) are scored
    by the L1 norm of their producers' filters instead (`fallback`), on its own
    scale: with a global allocation compare such groups with care.

    Args:
        fallback: Criterion name for groups without BatchNormalization, or
            `None` to raise an error naming the group. Defaults to `"l1"`.
    """

    name = "bn_scale"

    def __init__(self, fallback: str | None = "l1"):
        self.fallback = fallback

    def score_group(self, group: GroupView) -> np.ndarray:
        gammas = []
        for layer, positions in group.per_channel.values():
            gamma = getattr(layer, "gamma", None)
            if not isinstance(layer, keras.layers.BatchNormalization) or gamma is None:
                continue
            gammas.append(group.gather(np.abs(np.asarray(gamma)), positions))
        if gammas:
            stacked = np.stack(gammas)
            carried = np.isfinite(stacked).any(axis=0)
            if carried.all():
                return np.nanmean(stacked, axis=0)
        if self.fallback is None:
            raise InvalidArgumentError(
                f"Criterion 'bn_scale': channel group {group.name!r} does not pass "
                "through a BatchNormalization with a scale. Leave it out of "
                "pruning (skip=[...]) or use BNScaleCriterion(fallback='l1')."
            )
        scorer = get_criterion(self.fallback)
        return _producer_mean(group, scorer)

    def __repr__(self) -> str:
        return f"BNScaleCriterion(fallback={self.fallback!r})"


# Each activation criterion and the calibration statistics it reads.
_ACTIVATION_KINDS = {
    "dfs": ("std",),
    "sfs": ("cosine",),
    "taylor": ("taylor",),
    "fisher": ("fisher",),
    "activation_k3": ("power",),
    "activation_k4": ("power",),
    "activation_k34": ("power",),
}


class ActivationCriterion(GroupCriterion):
    """Scores channels by their feature maps on calibration data.

    Needs `plan_pruning(..., data=...)` (and optionally `calibration_steps=`):
    each producer's output maps are accumulated over the batches
    (`hos_keras.calibration`), and a group's channel gets the mean of its
    producers' scores (`fisher`: their sum, per MAC saved).

    - `"dfs"`: diversity-aware feature selection (Li et al., IJCAI 2020): the mean
      over images of each map's spatial standard deviation; flat maps go first.
    - `"sfs"`: similarity-aware feature selection: minus the largest mean cosine
      similarity of a channel's maps to another channel's; the most redundant go
      first (both of a near-identical pair score alike).
    - `"taylor"`: first-order Taylor (Molchanov et al., ICLR 2017): the mean over
      images of |sum over positions of a * dL/da|, the loss change the first-order
      expansion predicts when the map is zeroed.
    - `"fisher"`: Group Fisher (Liu et al., ICML 2021): the sum over images of
      (sum over positions of a * dL/da)^2, summed over the group's producers and
      divided by the MACs one channel of the group costs.
    - `"activation_k3"`, `"activation_k4"`, `"activation_k34"`: the paper's
      cumulants (k-statistics, signed as the weight criteria) of each channel's
      activation values over all images and positions, instead of its weights.

    An attention layer's channels are its heads (key/value groups with
    grouped-query attention): a head's map is its own output, the value-weighted
    sum the output projection reads, its head channels (and a group's query
    heads) counted as positions, so each statistic reduces a head as it reduces
    a channel. Producers inside nested models and keras-hub blocks are read
    where they are (`hos_keras.calibration`).

    Args:
        kind: One of the names above.

    Raises:
        UnknownNameError: for another kind.
    """

    def __init__(self, kind: str):
        if kind not in _ACTIVATION_KINDS:
            raise UnknownNameError(
                f"Received kind={kind!r}; pass one of {sorted(_ACTIVATION_KINDS)}."
            )
        self.kind = kind
        self.name = kind
        self.statistics = _ACTIVATION_KINDS[kind]
        self.needs_macs = kind == "fisher"

    def score_group(self, group: GroupView) -> np.ndarray:
        missing = [p for p in group.producers if p not in group.activations]
        if missing:
            raise InvalidArgumentError(
                f"Criterion {self.kind!r} scores feature maps and has none for "
                f"{missing}: pass calibration data, plan_pruning(..., data=(x, y)) "
                "or a tf.data.Dataset."
            )
        parts = [
            group.gather(self._producer_scores(group.activations[p]), positions)
            for p, (_, positions) in group.producers.items()
        ]
        stacked = np.stack(parts)
        if self.kind == "fisher":
            return np.nansum(stacked, axis=0) / max(group.macs_per_channel or 1.0, 1.0)
        return np.nanmean(stacked, axis=0)

    def _producer_scores(self, sums) -> np.ndarray:
        images = max(sums.images, 1)
        if self.kind == "dfs":
            return sums.std_sum / images
        if self.kind == "sfs":
            similarity = sums.cosine_sum / images
            similarity = similarity - np.diag(np.full(len(similarity), np.inf))
            if len(similarity) == 1:
                return np.zeros(1)
            return -similarity.max(axis=1)
        if self.kind == "taylor":
            return sums.taylor_sum / images
        if self.kind == "fisher":
            return sums.fisher_sum
        order = {"activation_k3": (3,), "activation_k4": (4,)}.get(self.kind, (3, 4))
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.prod([sums.power.kstat(k) for k in order], axis=0)
        return np.where(sums.power.degenerate, LEAST_INFORMATIVE_SCORE, score)

    def __repr__(self) -> str:
        return f"ActivationCriterion({self.kind!r})"


class HeadImportanceCriterion(GroupCriterion):
    """Head importance: the expected |dL/d xi| of a gate xi on each head.

    Michel, Levy, Neubig, "Are Sixteen Heads Really Better than One?", NeurIPS
    2019, eq. 2: with a gate xi_h multiplying head h's output (all gates 1),
    `I_h = E_x |dL(x)/d xi_h| = E_x |sum over positions of <Att_h(x),
    dL/dAtt_h(x)>|`, the loss change that masking the head predicts to first
    order, averaged over the calibration samples. A head's output is the
    value-weighted sum the output projection reads; with grouped-query attention
    a unit's gate covers the query heads of its key/value head. The same gate on
    any other channel (an MLP unit, a convolution's map) gives the first-order
    Taylor criterion of its output (Molchanov et al., ICLR 2017), so the
    criterion scores every group of any model: a group channel made by several
    producers gets the sum of their importances.

    As in the paper (section 4.2), the importances of each group (one attention
    layer's heads, one layer's channels) are divided by their l2 norm, so that
    a global allocation compares layers on one scale.

    Needs `plan_pruning(..., data=(x, y))` (`calibration_loss=` for another
    loss than sparse categorical cross-entropy).

    Args:
        normalize: Divide each group's importances by their l2 norm. Defaults
            to `True`.

    Example:

    ```python
    plan = hos_keras.plan_pruning(
        model, criterion="head_importance", allocation="global", fraction=0.3,
        data=(x, y),
    )
    ```
    """

    name = "head_importance"
    statistics = ("taylor",)

    def __init__(self, normalize: bool = True):
        if not isinstance(normalize, bool):
            raise ArgumentTypeError(
                f"Received normalize={normalize!r}; pass True or False."
            )
        self.normalize = normalize

    def score_group(self, group: GroupView) -> np.ndarray:
        missing = [p for p in group.producers if p not in group.activations]
        if missing:
            raise InvalidArgumentError(
                f"Criterion 'head_importance' reads the loss gradients of the "
                f"channels' outputs and has none for {missing}: pass calibration "
                "data, plan_pruning(..., data=(x, y)) or a tf.data.Dataset."
            )
        parts = [
            group.gather(
                group.activations[p].taylor_sum / max(group.activations[p].images, 1),
                positions,
            )
            for p, (_, positions) in group.producers.items()
        ]
        importance = np.nansum(np.stack(parts), axis=0)
        norm = float(np.linalg.norm(importance))
        if self.normalize and norm > 0:
            return importance / norm
        return importance

    def __repr__(self) -> str:
        return f"HeadImportanceCriterion(normalize={self.normalize})"


def _producer_mean(group: GroupView, scorer) -> np.ndarray:
    """A plain criterion's scores of the group's producers, averaged per channel."""
    parts = [
        group.gather(scorer(filters), positions)
        for filters, positions in group.producers.values()
    ]
    return np.nanmean(np.stack(parts), axis=0)


class CumulantCriterion:
    """Scores filters by a higher-order statistic of their weights.

    Statistics, computed per filter over all of its weights in one vectorized pass:
    `k3` and `k4` (unbiased k-statistics, as `scipy.stats.kstat`), `k34` = k3 * k4
    (the paper's default), `skew` (biased), `kurtosis` (Fisher excess, biased) and
    `skew_kurtosis` = skew * kurtosis. Chatzikonstantinou et al., CVPRW 2020, eqs. 3-5.

    Args:
        statistic: One of `"k3"`, `"k4"`, `"k34"`, `"skew"`, `"kurtosis"`,
            `"skew_kurtosis"`. Defaults to `"k34"`.
        absolute: Rank by the absolute value (distance from Gaussianity) instead of
            the signed value the paper's code ranks. Defaults to `False`.

    Raises:
        UnknownNameError: for an unknown statistic.

    Example:

    ```python
    scores = CumulantCriterion("k34")(filter_matrix(model.get_layer("conv1")))
    ```
    """

    def __init__(self, statistic: str = "k34", absolute: bool = False):
        if statistic not in _CUMULANT_STATISTICS:
            raise UnknownNameError(
                f"Received statistic={statistic!r}; pass one of "
                f"{list(_CUMULANT_STATISTICS)}."
            )
        self.statistic = statistic
        self.absolute = bool(absolute)
        self.name = ("abs_" if absolute else "") + statistic

    def __call__(self, filters: np.ndarray) -> np.ndarray:
        filters = _check_filters(filters)
        needed = _MIN_SAMPLES[self.statistic]
        if filters.shape[0] < needed:
            raise InvalidArgumentError(
                f"Criterion {self.name!r} needs at least {needed} weights per filter; "
                f"the filters have {filters.shape[0]}. Use 'l1' or 'l2' for such "
                "layers, or leave them out of pruning."
            )
        sums = stats.PowerSums.from_array(filters, axis=0)
        score = self._statistic(sums)
        if self.absolute:
            score = np.abs(score)
        return np.where(sums.degenerate, LEAST_INFORMATIVE_SCORE, score)

    def _statistic(self, sums: stats.PowerSums) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.statistic == "k3":
                return sums.kstat(3)
            if self.statistic == "k4":
                return sums.kstat(4)
            if self.statistic == "k34":
                return sums.kstat(3) * sums.kstat(4)
            if self.statistic == "skew":
                return sums.skew()
            if self.statistic == "kurtosis":
                return sums.kurtosis()
            return sums.skew() * sums.kurtosis()

    def __repr__(self) -> str:
        return f"CumulantCriterion({self.statistic!r}, absolute={self.absolute})"


class NormCriterion:
    """Scores filters by their L1 or L2 norm (magnitude baseline).

    Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets",
    ICLR 2017 (L1); the L2 variant is the usual alternative.

    Args:
        order: `1` or `2`. Defaults to `1`.

    Raises:
        InvalidArgumentError: for another order.
    """

    def __init__(self, order: int = 1):
        if order not in (1, 2):
            raise InvalidArgumentError(f"Received order={order!r}; pass 1 or 2.")
        self.order = order
        self.name = f"l{order}"

    def __call__(self, filters: np.ndarray) -> np.ndarray:
        filters = _check_filters(filters).astype(np.float64, copy=False)
        if self.order == 1:
            return np.abs(filters).sum(axis=0)
        return np.sqrt(np.einsum("ij,ij->j", filters, filters))

    def __repr__(self) -> str:
        return f"NormCriterion(order={self.order})"


class FPGMCriterion:
    """Scores filters by their distance to the other filters of the layer.

    Filter pruning via geometric median (He, Liu, Wang, Hu, Yang, CVPR 2019): the
    filters nearest the layer's geometric median are the ones the others can
    stand in for, so they go first whatever their norm. As in the paper's code,
    each filter's score is its summed Euclidean distance to every other filter
    of the layer (the geometric median minimises that sum, so the lowest scores
    are the filters closest to it).

    Example:

    ```python
    scores = FPGMCriterion()(filter_matrix(model.get_layer("conv1")))
    ```
    """

    name = "fpgm"

    def __call__(self, filters: np.ndarray) -> np.ndarray:
        filters = _check_filters(filters).astype(np.float64, copy=False)
        norms = np.einsum("ij,ij->j", filters, filters)
        squared = norms[:, None] + norms[None, :] - 2.0 * (filters.T @ filters)
        return np.sqrt(np.maximum(squared, 0.0)).sum(axis=1)

    def __repr__(self) -> str:
        return "FPGMCriterion()"


class LAMPCriterion:
    """Layer-adaptive magnitude scores of filters, comparable across layers.

    LAMP (Lee, Park, Mo, Ahn, Shin, "Layer-adaptive Sparsity for the
    Magnitude-based Pruning", ICLR 2021), applied to whole filters: with the
    filters' squared L2 norms n sorted ascending, a filter's score is its n over
    the sum of the n of every filter at least as large. Within a layer the order
    is the norm's; across layers the scores are on one scale (the largest filter
    of every layer scores 1), which is what a global allocation
    (`allocation="global"`) ranks.

    Example:

    ```python
    plan = hos_keras.plan_pruning(model, criterion="lamp", allocation="global",
                                  fraction=0.4)
    ```
    """

    name = "lamp"

    def __call__(self, filters: np.ndarray) -> np.ndarray:
        filters = _check_filters(filters).astype(np.float64, copy=False)
        norms = np.einsum("ij,ij->j", filters, filters)
        order = np.argsort(norms, kind="stable")
        tail = np.cumsum(norms[order][::-1])[::-1]  # sum of this and larger ones
        scores = np.empty_like(norms)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[order] = np.where(tail > 0, norms[order] / tail, 0.0)
        return scores

    def __repr__(self) -> str:
        return "LAMPCriterion()"


class RandomCriterion:
    """Uniform random scores: the chance baseline every criterion must beat.

    The generator is created from `seed` when the criterion is constructed and
    advances with every call, so scoring a model's layers in order is reproducible
    for a given seed, and different layers get independent scores.

    Args:
        seed: Seed of `numpy.random.default_rng`. Defaults to `0`.
    """

    name = "random"

    def __init__(self, seed: int | None = 0):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __call__(self, filters: np.ndarray) -> np.ndarray:
        filters = _check_filters(filters)
        return self._rng.random(filters.shape[1])

    def __repr__(self) -> str:
        return f"RandomCriterion(seed={self.seed})"


def _check_filters(filters) -> np.ndarray:
    array = np.asarray(filters)
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidArgumentError(
            "A criterion expects a (weights_per_filter, n_filters) matrix with at "
            f"least one filter; received shape {array.shape}."
        )
    return array


_REGISTRY: dict[str, Callable[..., Callable[[np.ndarray], np.ndarray]]] = {}


def register_criterion(
    name: str, factory: Callable[..., Callable[[np.ndarray], np.ndarray]]
) -> None:
    """Adds a named criterion so that `plan_pruning(criterion=name)` finds it.

    Args:
        name: Registry name. Must not be taken already.
        factory: Called as `factory(seed=seed)` or `factory()` to make the criterion:
            a callable from a filter matrix to one score per filter.

    Raises:
        InvalidArgumentError: if `name` is already registered.

    Example:

    ```python
    def max_abs():
        return lambda filters: np.abs(filters).max(axis=0)

    hos_keras.register_criterion("max_abs", max_abs)
    plan = hos_keras.plan_pruning(model, criterion="max_abs", allocation="fixed",
                                  ratio=0.3)
    ```
    """
    if name in _REGISTRY:
        raise InvalidArgumentError(
            f"A criterion named {name!r} is already registered; pick another name."
        )
    _REGISTRY[name] = factory


def criterion_names() -> list[str]:
    """The registered criterion names, sorted."""
    return sorted(_REGISTRY)


def get_criterion(criterion="k34", seed: int | None = 0):
    """Resolves a criterion name (or passes a callable through).

    Args:
        criterion: A registered name (see `criterion_names()`) or a callable from a
            filter matrix to scores. Defaults to `"k34"`.
        seed: Seed for criteria that use randomness (`"random"`). Defaults to `0`.

    Returns:
        A callable criterion.

    Raises:
        UnknownNameError: for an unregistered name (the message lists the names).
        ArgumentTypeError: for something that is neither a string nor callable.
    """
    if isinstance(criterion, str):
        if criterion not in _REGISTRY:
            raise UnknownNameError(
                f"Unknown criterion {criterion!r}; valid names are "
                f"{criterion_names()}, or pass a callable."
            )
        factory = _REGISTRY[criterion]
        if "seed" in inspect.signature(factory).parameters:
            return factory(seed=seed)
        return factory()
    if callable(criterion):
        return criterion
    raise ArgumentTypeError(
        f"Received criterion={criterion!r} of type {type(criterion).__name__}; pass "
        "a criterion name or a callable."
    )


def _cumulant_factory(statistic: str, absolute: bool):
    def factory() -> CumulantCriterion:
        return CumulantCriterion(statistic, absolute=absolute)

    return factory


for _statistic in _CUMULANT_STATISTICS:
    register_criterion(_statistic, _cumulant_factory(_statistic, False))
    register_criterion("abs_" + _statistic, _cumulant_factory(_statistic, True))
register_criterion("l1", lambda: NormCriterion(1))
register_criterion("l2", lambda: NormCriterion(2))
register_criterion("random", lambda seed=0: RandomCriterion(seed))
register_criterion("fpgm", FPGMCriterion)
register_criterion("bn_scale", BNScaleCriterion)
for _kind in _ACTIVATION_KINDS:
    register_criterion(_kind, lambda kind=_kind: ActivationCriterion(kind))
register_criterion("lamp", LAMPCriterion)
register_criterion("head_importance", HeadImportanceCriterion)
