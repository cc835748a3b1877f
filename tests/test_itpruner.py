"""allocation="itpruner": linear CKA by hand, and the budgeted keep fractions
against a brute-force search over every width of a 3-layer network."""

import itertools

import keras
import numpy as np
import pytest
import tiny

import hos_keras
from hos_keras import calibration
from hos_keras.errors import InvalidArgumentError, UnreachableTargetError

WIDTHS = {"c1": 6, "c2": 8, "c3": 6}


def _model():
    return tiny.chain(tuple(WIDTHS.values()), input_shape=(8, 8, 2), seed=2)


def _data(n=24):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 8, 8, 2)).astype("float32"), np.arange(n) % 3


def _cka(x, y):
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_))


def test_linear_cka_is_the_normalised_hsic_of_centred_linear_kernels():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 7)), rng.normal(size=(20, 4))
    z = x @ rng.normal(size=(7, 7))  # a linear map of x
    got = calibration.linear_cka({"x": x, "y": y, "z": z, "x2": 3.0 * x + 1.0})
    expected = [[_cka(a, b) for b in (x, y, z, x)] for a in (x, y, z, x)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert got[0, 3] == pytest.approx(1.0)  # invariant to scale and shift


def _macs(counts):
    """MACs of the toy at given widths, counted by hand (8x8 maps, 3x3 kernels,
    bias adds left out as hos_keras.profile does)."""
    c1, c2, c3 = counts
    return 64 * 9 * (2 * c1 + c1 * c2 + c2 * c3) + c3 * 3


@pytest.mark.parametrize("beta, target", [(2.0, 0.5), (5.0, 0.3), (5.0, 0.7)])
def test_itpruner_meets_the_budget_and_matches_brute_force(beta, target):
    model, data = _model(), _data()
    assert _macs(list(WIDTHS.values())) == hos_keras.profile(model)["macs"]
    plan = hos_keras.plan_pruning(
        model,
        "l1",
        "itpruner",
        macs_reduction=target,
        beta=beta,
        min_keep=0.1,
        data=data,
    )
    # The importance: exp(-beta * summed linear CKA of the layers' outputs).
    probe = keras.Model(model.input, [model.get_layer(n).output for n in WIDTHS])
    maps = [m.numpy().reshape(24, -1).astype(np.float64) for m in probe(data[0])]
    cka = np.array([[_cka(a, b) for b in maps] for a in maps])
    alpha = np.exp(-beta * cka.sum(axis=1))
    np.testing.assert_allclose([plan[n].statistic for n in WIDTHS], alpha, rtol=1e-6)
    counts = [len(plan[n].keep) for n in WIDTHS]
    budget = (1 - target) * _macs(list(WIDTHS.values()))
    assert plan.macs_after == _macs(counts) <= budget
    assert plan.details["achieved_macs_reduction"] >= target

    def objective(combo):
        return sum(a * c / w for a, c, w in zip(alpha, combo, WIDTHS.values()))

    # Brute force over every width (at least one channel) within the budget.
    best = max(
        itertools.product(*(range(1, w + 1) for w in WIDTHS.values())),
        key=lambda combo: objective(combo) if _macs(combo) <= budget else -1.0,
    )
    # The continuous optimum, rounded down to whole channels, is the best width
    # of all on this toy (in general rounding may cost up to a channel a group).
    assert counts == list(best)


def test_itpruner_needs_data_and_reachable_targets():
    model, data = _model(), _data()
    with pytest.raises(InvalidArgumentError, match="calibration data"):
        hos_keras.plan_pruning(model, "l1", "itpruner", macs_reduction=0.5)
    with pytest.raises(UnreachableTargetError, match="min_keep=0.9"):
        hos_keras.plan_pruning(
            model, "l1", "itpruner", macs_reduction=0.5, min_keep=0.9, data=data
        )
    with pytest.raises(InvalidArgumentError, match="beta=-1"):
        hos_keras.get_allocation("itpruner", beta=-1)


def test_itpruner_inside_fit_through_the_callback():
    model, (x, y) = _model(), _data()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[1, 2],
        criterion="l1",
        allocation="itpruner",
        macs_reduction=[0.3, 0.5],
        data=(x, y),
        verbose=0,
    )
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    plan = callback.plan
    assert plan.allocation == "itpruner"
    assert plan.macs_reduction >= 0.5
    counts = [len(plan[n].keep) for n in WIDTHS]
    assert hos_keras.profile(callback.slim_model())["macs"] == _macs(counts)
