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

import inspect
from collections.abc import Callable
from typing import Protocol

import numpy as np

from hos_keras import stats
from hos_keras.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    UnknownNameError,
)

__all__ = [
    "LEAST_INFORMATIVE_SCORE",
    "Criterion",
    "CumulantCriterion",
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
