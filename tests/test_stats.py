"""hos_keras.stats against scipy.stats evaluated in float64."""

import numpy as np
import pytest
import scipy.stats

import hos_keras
from hos_keras import stats
from hos_keras.errors import HOSKerasError, InvalidArgumentError

RTOL = 1e-6


def _samples(dtype, shape=(400, 7), seed=0):
    """Skewed, heavy-tailed and shifted columns, so no statistic is near zero."""
    rng = np.random.default_rng(seed)
    columns = [
        rng.gamma(2.0, 1.0, shape[0]),
        -rng.gamma(0.7, 2.0, shape[0]) + 3.0,
        rng.standard_t(5, shape[0]) * 0.01,
        rng.lognormal(0.0, 0.6, shape[0]),
        rng.exponential(0.05, shape[0]) - 1.0,
        rng.weibull(1.3, shape[0]) * 40.0,
        rng.chisquare(3, shape[0]) * 1e-3,
    ]
    return np.stack(columns[: shape[1]], axis=1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kstat_matches_scipy_per_column(dtype, order):
    x = _samples(dtype)
    ours = hos_keras.kstat(x, order, axis=0)
    reference = [
        scipy.stats.kstat(x[:, j].astype(np.float64), order) for j in range(x.shape[1])
    ]
    np.testing.assert_allclose(ours, reference, rtol=RTOL)
    assert ours.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kstat_axis_none_flattens_like_scipy(dtype):
    x = _samples(dtype, (50, 4)).reshape(5, 10, 4)
    for order in (2, 3, 4):
        np.testing.assert_allclose(
            hos_keras.kstat(x, order),
            scipy.stats.kstat(x.astype(np.float64), order),
            rtol=RTOL,
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_skew_and_kurtosis_match_scipy_on_any_axis(dtype, axis):
    x = np.moveaxis(_samples(dtype, (300, 6)).reshape(300, 2, 3), 0, axis % 3)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(
        stats.skew(x, axis=axis), scipy.stats.skew(x64, axis=axis), rtol=RTOL
    )
    np.testing.assert_allclose(
        stats.kurtosis(x, axis=axis), scipy.stats.kurtosis(x64, axis=axis), rtol=RTOL
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jarque_bera_matches_scipy(dtype):
    x = _samples(dtype, (500, 5))
    for j in range(5):
        expected = scipy.stats.jarque_bera(x[:, j].astype(np.float64))
        result = stats.jarque_bera(x[:, j])
        np.testing.assert_allclose(result.statistic, expected.statistic, rtol=RTOL)
        np.testing.assert_allclose(
            result.pvalue, expected.pvalue, rtol=1e-6, atol=1e-300
        )
    vectorized = stats.jarque_bera(x, axis=0).statistic
    expected = scipy.stats.jarque_bera(x.astype(np.float64), axis=0).statistic
    np.testing.assert_allclose(vectorized, expected, rtol=RTOL)


def test_float32_matches_scipy_on_float32_where_scipy_is_accurate():
    # Centred, moderate data: scipy's raw-power-sum formula is accurate even in
    # float32 there, so both agree on the unconverted input as well.
    x = np.random.default_rng(3).gamma(2.0, 1.0, 3000).astype(np.float32) - 2.0
    np.testing.assert_allclose(
        hos_keras.kstat(x, 2), scipy.stats.kstat(x, 2), rtol=1e-4
    )
    np.testing.assert_allclose(stats.skew(x), scipy.stats.skew(x), rtol=1e-4)


def test_shapiro_wilk_is_scipys_w():
    x = _samples(np.float32, (200, 3))
    expected = scipy.stats.shapiro(x.astype(np.float64).ravel()).statistic
    assert stats.shapiro_wilk(x) == pytest.approx(expected, rel=1e-12)


def test_shapiro_wilk_large_sample_has_no_warning_and_subsamples():
    x = np.random.default_rng(1).normal(size=20_000)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        w = stats.shapiro_wilk(x)
    assert 0.99 < w <= 1.0
    rng = np.random.default_rng(7)
    subsample = rng.choice(x, size=1000, replace=False)
    assert stats.shapiro_wilk(x, max_samples=1000, seed=7) == pytest.approx(
        scipy.stats.shapiro(subsample).statistic, rel=1e-12
    )


@pytest.mark.parametrize("split", [1, 17, 250, 399])
def test_power_sums_merge_equals_whole(split):
    x = _samples(np.float64, (400, 7))
    whole = stats.PowerSums.from_array(x, axis=0)
    merged = stats.PowerSums.from_array(x[:split], axis=0) + stats.PowerSums.from_array(
        x[split:], axis=0
    )
    assert merged.count == whole.count
    for field in ("mean", "m2", "m3", "m4"):
        np.testing.assert_allclose(
            getattr(merged, field), getattr(whole, field), rtol=1e-10, atol=1e-12
        )
    for order in (2, 3, 4):
        np.testing.assert_allclose(
            merged.kstat(order),
            [scipy.stats.kstat(x[:, j], order) for j in range(7)],
            rtol=RTOL,
        )


def test_power_sums_merge_many_batches_in_any_order():
    x = _samples(np.float64, (400, 7))
    batches = [stats.PowerSums.from_array(b, axis=0) for b in np.array_split(x, 9)]
    forward = batches[0]
    for b in batches[1:]:
        forward = forward + b
    backward = batches[-1]
    for b in reversed(batches[:-1]):
        backward = b.merge(backward)
    np.testing.assert_allclose(forward.kstat(4), backward.kstat(4), rtol=1e-9)
    np.testing.assert_allclose(forward.kstat(4), stats.kstat(x, 4, axis=0), rtol=1e-9)


def test_power_sums_merge_shape_mismatch():
    a = stats.PowerSums.from_array(np.ones((5, 2)), axis=0)
    b = stats.PowerSums.from_array(np.ones((5, 3)), axis=0)
    with pytest.raises(InvalidArgumentError, match="different shapes"):
        a.merge(b)


def test_raw_power_sum_cancellation_is_avoided():
    # Large mean, small spread: raw sums lose every digit of k4 here; centred sums
    # keep it. Reference: scipy on the mean-removed data (cumulants of order >= 2
    # do not depend on the mean).
    rng = np.random.default_rng(2)
    noise = rng.gamma(2.0, 1e-3, 5000)
    x = 1000.0 + noise
    np.testing.assert_allclose(
        hos_keras.kstat(x, 4), scipy.stats.kstat(noise - noise.mean(), 4), rtol=1e-5
    )


def test_zero_variance_gives_nan_standardized_moments_like_scipy():
    x = np.full((10, 2), 0.1, dtype=np.float32)
    assert np.all(stats.PowerSums.from_array(x, axis=0).degenerate)
    assert np.all(np.isnan(stats.skew(x)))
    assert np.all(np.isnan(stats.kurtosis(x)))
    # scipy warns that constant data loses precision; the NaN is the point here.
    with (
        np.errstate(all="ignore"),
        pytest.warns(RuntimeWarning, match="Precision loss"),
    ):
        assert np.all(np.isnan(scipy.stats.skew(x)))


def test_bad_inputs():
    with pytest.raises(InvalidArgumentError, match="n=5"):
        hos_keras.kstat(np.ones(10), 5)
    with pytest.raises(InvalidArgumentError, match="at least 4 samples"):
        hos_keras.kstat(np.arange(3.0), 4)
    with pytest.raises(InvalidArgumentError, match="axis=3"):
        hos_keras.kstat(np.ones((3, 3)), 2, axis=3)
    with pytest.raises(InvalidArgumentError, match="empty"):
        stats.skew(np.ones((0, 3)))
    with pytest.raises(HOSKerasError, match="dtype"):
        stats.skew(np.array(["a", "b"]))
    with pytest.raises(InvalidArgumentError, match="at least 3"):
        stats.shapiro_wilk([1.0, 2.0])
    with pytest.raises(InvalidArgumentError, match="max_samples"):
        stats.shapiro_wilk(np.ones(10), max_samples=2)
