"""Vectorized higher-order statistics in pure numpy.

Everything here reduces along an axis in a few passes over the data, so the filters
of a whole layer (or a whole network) are scored at once instead of one scipy call
per filter. The results equal `scipy.stats.kstat`, `skew`, `kurtosis` and
`jarque_bera` evaluated in float64.

The building block is `PowerSums`: the count, the mean and the sums of the 2nd, 3rd
and 4th powers of the deviations from the mean. Centred sums lose far less precision
than the raw power sums `sum(x**k)` (which cancel catastrophically when the mean is
large against the spread), and they merge exactly (Pebay, "Formulas for robust,
one-pass parallel computation of covariances and arbitrary-order statistical
moments", Sandia report SAND2008-6212), so statistics can be accumulated over batches
of data or over replicas and combined afterwards.

Reference: Fisher's k-statistics, as in Kendall & Stuart, "The Advanced Theory of
Statistics", vol. 1, ch. 12; Jarque & Bera, "A test for normality of observations
and regression residuals", International Statistical Review 55 (1987).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import NamedTuple

import numpy as np
import scipy.stats

from hos_keras.errors import InvalidArgumentError

__all__ = [
    "JarqueBeraResult",
    "PowerSums",
    "jarque_bera",
    "kstat",
    "kurtosis",
    "shapiro_wilk",
    "skew",
]


def _as_float64(x) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise InvalidArgumentError(
            f"Expected a real numeric array; received dtype={array.dtype}."
        )
    return array.astype(np.float64, copy=False)


_BLOCK_ELEMENTS = 1 << 16


@dataclasses.dataclass(frozen=True)
class PowerSums:
    """Mergeable sums from which moments and k-statistics of order <= 4 follow.

    Holds, for every position of the reduced array, the sample count `n`, the mean,
    and the centred power sums `m2 = sum((x - mean) ** 2)`, `m3` and `m4`. Two
    `PowerSums` over disjoint parts of a sample combine with `merge` (or `+`) into
    exactly the sums of the whole sample, up to rounding.

    Args:
        count: Number of samples (an integer; the same for every position).
        mean: Array of means.
        m2: Array of centred sums of squares.
        m3: Array of centred sums of cubes.
        m4: Array of centred sums of fourth powers.
        resolution: Relative resolution of the data's original dtype, used to decide
            when the variance is zero up to rounding (see `degenerate`).

    Example:

    ```python
    x = np.random.default_rng(0).gamma(2.0, size=(1000, 8))
    whole = PowerSums.from_array(x, axis=0)
    parts = PowerSums.from_array(x[:400], axis=0) + PowerSums.from_array(
        x[400:], axis=0
    )
    np.testing.assert_allclose(whole.kstat(4), parts.kstat(4))
    ```
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    m4: np.ndarray
    resolution: float = float(np.finfo(np.float64).resolution)

    @classmethod
    def from_array(cls, x, axis: int | None = None) -> PowerSums:
        """Computes the sums of `x` along `axis` (all elements when `None`).

        The computation runs in float64 whatever the input dtype; the resolution of
        the input dtype is remembered for the degeneracy test.

        Args:
            x: Array-like of real numbers.
            axis: Axis to reduce. Defaults to `None` (flatten).

        Returns:
            A `PowerSums` whose arrays have the shape of `x` without `axis`.

        Raises:
            InvalidArgumentError: if `x` is not numeric or `axis` is out of range.
        """
        raw = np.asarray(x)
        if raw.dtype.kind not in "biuf":
            raise InvalidArgumentError(
                f"Expected a real numeric array; received dtype={raw.dtype}."
            )
        data = raw if raw.dtype.kind == "f" else raw.astype(np.float64)
        resolution = float(np.finfo(data.dtype).resolution)
        if axis is None:
            data = data.reshape(-1)
            axis = 0
        if not -data.ndim <= axis < max(data.ndim, 1):
            raise InvalidArgumentError(
                f"Received axis={axis} for an array of {data.ndim} dimensions; pass "
                f"an axis in [{-data.ndim}, {data.ndim - 1}] or None."
            )
        count = data.shape[axis]
        if count == 0:
            raise InvalidArgumentError(
                "Cannot compute statistics of an empty sample "
                f"(array shape {data.shape}, axis={axis})."
            )
        data = np.moveaxis(data, axis, 0)
        rest = data.shape[1:]
        data = data.reshape(count, -1)
        mean = data.sum(axis=0, dtype=np.float64) / count
        m2, m3, m4 = (np.zeros_like(mean) for _ in range(3))
        # Centred sums in float64, a block of rows at a time: the temporaries stay
        # small (cache-resident, no fresh pages) whatever the size of the input.
        rows = max(1, _BLOCK_ELEMENTS // max(1, data.shape[1]))
        for start in range(0, count, rows):
            dev = np.subtract(data[start : start + rows], mean, dtype=np.float64)
            sq = dev * dev
            m2 += sq.sum(axis=0)
            m3 += np.einsum("ij,ij->j", sq, dev)
            m4 += np.einsum("ij,ij->j", sq, sq)
        mean, m2, m3, m4 = (a.reshape(rest) for a in (mean, m2, m3, m4))
        return cls(count, mean, m2, m3, m4, resolution)

    def merge(self, other: PowerSums) -> PowerSums:
        """Combines the sums of two disjoint samples (Pebay 2008, eqs. 2.1-2.3).

        Args:
            other: Sums over another part of the sample, with the same shape.

        Returns:
            The `PowerSums` of the union of both samples.

        Raises:
            InvalidArgumentError: if the shapes of the two sums differ.
        """
        if np.shape(self.mean) != np.shape(other.mean):
            raise InvalidArgumentError(
                "Cannot merge PowerSums of different shapes: "
                f"{np.shape(self.mean)} and {np.shape(other.mean)}."
            )
        na, nb = float(self.count), float(other.count)
        n = na + nb
        delta = other.mean - self.mean
        delta_n = delta / n
        mean = self.mean + nb * delta_n
        m2 = self.m2 + other.m2 + delta * delta_n * na * nb
        m3 = (
            self.m3
            + other.m3
            + delta * delta_n**2 * na * nb * (na - nb)
            + 3.0 * delta_n * (na * other.m2 - nb * self.m2)
        )
        m4 = (
            self.m4
            + other.m4
            + delta * delta_n**3 * na * nb * (na * na - na * nb + nb * nb)
            + 6.0 * delta_n**2 * (na * na * other.m2 + nb * nb * self.m2)
            + 4.0 * delta_n * (na * other.m3 - nb * self.m3)
        )
        resolution = max(self.resolution, other.resolution)
        return PowerSums(self.count + other.count, mean, m2, m3, m4, resolution)

    __add__ = merge

    @property
    def degenerate(self) -> np.ndarray:
        """Boolean mask of positions whose variance is zero up to rounding.

        Uses the same rule as scipy.stats.skew: the second central moment is not
        larger than `(resolution * mean) ** 2`, where `resolution` is that of the
        input dtype. Standardized moments are undefined there.
        """
        m2 = self.m2 / self.count
        return np.asarray(m2 <= (self.resolution * self.mean) ** 2)

    def moment(self, order: int) -> np.ndarray:
        """Biased central moment of order 2, 3 or 4 (`scipy.stats.moment`)."""
        sums = {2: self.m2, 3: self.m3, 4: self.m4}
        if order not in sums:
            raise InvalidArgumentError(f"Received order={order}; pass 2, 3 or 4.")
        return sums[order] / self.count

    def kstat(self, n: int = 2) -> np.ndarray:
        """Unbiased k-statistic of order `n` (1 to 4), as `scipy.stats.kstat`.

        Raises:
            InvalidArgumentError: if `n` is not in 1..4 or there are not more than
                `n - 1` samples (the estimator divides by (N-1)...(N-n+1)).
        """
        if n not in (1, 2, 3, 4):
            raise InvalidArgumentError(
                f"Received n={n!r}; k-statistics are defined here for n in 1..4."
            )
        size = self.count
        if n > 1 and size < n:
            raise InvalidArgumentError(
                f"The k-statistic of order {n} needs at least {n} samples along the "
                f"reduced axis; received {size}."
            )
        if n == 1:
            return np.asarray(self.mean)
        big_n = float(size)
        m2, m3, m4 = self.m2 / big_n, self.m3 / big_n, self.m4 / big_n
        if n == 2:
            return big_n * m2 / (big_n - 1.0)
        if n == 3:
            return big_n**2 * m3 / ((big_n - 1.0) * (big_n - 2.0))
        return (
            big_n**2
            * ((big_n + 1.0) * m4 - 3.0 * (big_n - 1.0) * m2**2)
            / ((big_n - 1.0) * (big_n - 2.0) * (big_n - 3.0))
        )

    def skew(self) -> np.ndarray:
        """Biased sample skewness g1 = m3 / m2**1.5; NaN where `degenerate`."""
        return self._standardized(self.moment(3), 1.5)

    def kurtosis(self) -> np.ndarray:
        """Biased Fisher excess kurtosis g2 = m4 / m2**2 - 3; NaN where degenerate."""
        return self._standardized(self.moment(4), 2.0) - 3.0

    def _standardized(self, numerator: np.ndarray, power: float) -> np.ndarray:
        m2 = self.moment(2)
        bad = self.degenerate
        with np.errstate(divide="ignore", invalid="ignore"):
            value = numerator / np.where(bad, 1.0, m2) ** power
        return np.where(bad, np.nan, value)


def kstat(x, n: int = 2, axis: int | None = None) -> np.ndarray:
    """Unbiased k-statistic of order `n` along an axis (vectorized `scipy.stats.kstat`).

    k1 is the mean, k2 the unbiased variance, k3 and k4 the unbiased third and fourth
    cumulants. The paper's filter criterion is k3 * k4 of each filter's weights.

    Args:
        x: Array-like of real numbers (any float dtype; computed in float64).
        n: Order, 1 to 4. Defaults to `2`.
        axis: Axis to reduce; `None` flattens the input. Defaults to `None`.

    Returns:
        float64 array (0-d when `axis` is `None`).

    Raises:
        InvalidArgumentError: for an order outside 1..4, fewer than `n` samples, a
            non-numeric input or a bad axis.

    Example:

    ```python
    >>> w = np.random.default_rng(0).normal(size=(3, 3, 16, 32))
    >>> k4 = hos_keras.kstat(w.reshape(-1, 32), 4, axis=0)  # one value per filter
    ```
    """
    if n not in (1, 2, 3, 4):
        raise InvalidArgumentError(
            f"Received n={n!r}; k-statistics are defined here for n in 1..4."
        )
    return PowerSums.from_array(x, axis=axis).kstat(n)


def skew(x, axis: int | None = 0) -> np.ndarray:
    """Biased sample skewness along an axis (equals `scipy.stats.skew`).

    Args:
        x: Array-like of real numbers.
        axis: Axis to reduce; `None` flattens. Defaults to `0`, as scipy.

    Returns:
        float64 array; NaN where the sample has zero variance, as scipy.
    """
    return PowerSums.from_array(x, axis=axis).skew()


def kurtosis(x, axis: int | None = 0) -> np.ndarray:
    """Biased Fisher (excess) kurtosis along an axis (equals `scipy.stats.kurtosis`).

    Args:
        x: Array-like of real numbers.
        axis: Axis to reduce; `None` flattens. Defaults to `0`, as scipy.

    Returns:
        float64 array; NaN where the sample has zero variance, as scipy.
    """
    return PowerSums.from_array(x, axis=axis).kurtosis()


class JarqueBeraResult(NamedTuple):
    """The Jarque-Bera statistic and its asymptotic chi-squared(2) p-value."""

    statistic: np.ndarray
    pvalue: np.ndarray


def jarque_bera(x, axis: int | None = None) -> JarqueBeraResult:
    """Jarque-Bera normality statistic along an axis (equals `scipy.stats.jarque_bera`).

    JB = n / 6 * (g1**2 + g2**2 / 4) with the biased skewness g1 and excess kurtosis
    g2; the p-value is the chi-squared(2) survival function, exp(-JB / 2).
    Jarque & Bera, International Statistical Review 55 (1987).

    Args:
        x: Array-like of real numbers.
        axis: Axis to reduce; `None` flattens. Defaults to `None`, as scipy.

    Returns:
        `JarqueBeraResult(statistic, pvalue)`; NaN for zero-variance samples.
    """
    sums = PowerSums.from_array(x, axis=axis)
    return jarque_bera_from_sums(sums)


def jarque_bera_from_sums(sums: PowerSums) -> JarqueBeraResult:
    """Jarque-Bera statistic from precomputed (possibly merged) `PowerSums`."""
    g1, g2 = sums.skew(), sums.kurtosis()
    statistic = sums.count / 6.0 * (g1**2 + g2**2 / 4.0)
    return JarqueBeraResult(statistic, np.exp(-statistic / 2.0))


def shapiro_wilk(x, max_samples: int | None = None, seed: int = 0) -> float:
    """Shapiro-Wilk W statistic of all elements of `x` (via `scipy.stats.shapiro`).

    W is close to 1 for Gaussian-looking data. scipy's p-value is only approximate
    beyond 5,000 samples, but W itself is computed on the full sample; hos_keras uses
    W only, so that warning is silenced here. Pass `max_samples` to compute W on a
    seeded uniform subsample instead (faster on very large layers).

    Shapiro & Wilk, "An analysis of variance test for normality", Biometrika 52
    (1965); algorithm AS R94 (Royston 1995) as implemented in scipy.

    Args:
        x: Array-like of real numbers (flattened).
        max_samples: If set, the number of elements drawn without replacement when
            `x` has more. Defaults to `None` (use every element).
        seed: Seed of the subsample. Defaults to `0`.

    Returns:
        W as a Python float.

    Raises:
        InvalidArgumentError: with fewer than 3 elements, or `max_samples < 3`.
    """
    data = _as_float64(x).reshape(-1)
    if data.size < 3:
        raise InvalidArgumentError(
            f"Shapiro-Wilk needs at least 3 values; received {data.size}."
        )
    if max_samples is not None:
        if max_samples < 3:
            raise InvalidArgumentError(
                f"Received max_samples={max_samples}; pass an integer >= 3 or None."
            )
        if data.size > max_samples:
            rng = np.random.default_rng(seed)
            data = rng.choice(data, size=max_samples, replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy.stats.shapiro(data).statistic)
