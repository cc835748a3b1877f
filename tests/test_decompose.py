"""hos_keras.decompose: Tucker-2 (HOOI) and filter group approximation of Conv2D."""

import math

import keras
import numpy as np
import pytest
from invariants import assert_equivalent, different_plan, outputs
from keras import layers

import hos_keras
from hos_keras.decompose import _hooi
from hos_keras.errors import InvalidArgumentError, UnknownNameError


def _small_model(sequential: bool = False) -> keras.Model:
    keras.utils.set_random_seed(1)
    stack = [
        layers.Conv2D(8, 3, padding="same", activation="relu", name="stem"),
        layers.Conv2D(12, 3, strides=2, padding="same", name="conv_a"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
        layers.Conv2D(16, (3, 2), dilation_rate=2, name="conv_b"),
        layers.Conv2D(8, 1, name="point"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(5, name="head"),
    ]
    if sequential:
        return keras.Sequential([keras.Input((12, 12, 8)), *stack], name="seq")
    inputs = keras.Input((12, 12, 8))
    x = inputs
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x, name="small")


def _all_outputs(model, names, x):
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    return [np.asarray(v) for v in probe.predict(x, verbose=0)]


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


X = np.random.default_rng(0).standard_normal((3, 12, 12, 8)).astype("float32")


@pytest.mark.parametrize("method", ["tucker2", "fga"])
def test_full_ranks_reproduce_every_layer(method):
    model = _small_model()
    new, report = hos_keras.decompose(
        model, method=method, ranks="full", return_report=True
    )
    # Default selection: kxk convs with >= 8 channels in and out; not the 1x1.
    assert sorted(report.layers) == ["conv_a", "conv_b", "stem"]
    assert "point" in [layer.name for layer in new.layers]
    names = [layer.name for layer in model.layers]
    for got, want in zip(
        _all_outputs(new, names, X), _all_outputs(model, names, X), strict=True
    ):
        assert _rel(got, want) < 1e-4
    for entry in report.layers.values():
        assert entry["kernel_error"] < 1e-6
        assert entry["output_error"] < 1e-4


def test_fga_full_rank_with_groups_reproduces_the_layer():
    model = _small_model()
    # conv_b: k*k*c_in/g = 6*12/4 = 18 >= c_out = 16, so rank 16 is full.
    new = hos_keras.decompose(
        model, method="fga", layers=["conv_b"], ranks={"conv_b": (4, 16)}
    )
    assert new.get_layer("conv_b_core").groups == 4
    got, want = _all_outputs(new, ["head"], X)[0], _all_outputs(model, ["head"], X)[0]
    assert _rel(got, want) < 1e-4


@pytest.mark.parametrize("method", ["tucker2", "fga"])
def test_output_error_decreases_as_factor_falls(method):
    model = _small_model()
    want = model.predict(X, verbose=0)
    errors = []
    for factor in (6.0, 3.0, 1.5, 1.0):
        new = hos_keras.decompose(model, method=method, factor=factor)
        errors.append(_rel(new.predict(X, verbose=0), want))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[0] > errors[-1]


def _hand_ranks(c_in, c_out, k, x):
    # docs/method.md#tucker-2-ranks, written out independently of hos_keras.decompose.
    if c_out > c_in:
        beta = 1 + (c_out / c_in - 1) / x
    elif c_in > c_out:
        beta = 1 / (1 + (c_in / c_out - 1) / x)
    else:
        beta = 1
    a, b, c = 1.0, (c_in + beta * c_out) / (beta * k * k), -c_in * c_out / (x * beta)
    r3 = math.floor((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
    r4 = math.ceil(beta * r3)
    return min(max(r3, 1), c_in), min(max(r4, 1), c_out)


@pytest.mark.parametrize(
    "c_in, c_out, k, x, expected",
    [
        # Hand-solved: c_in=c_out=16, k=3, X=2: R^2 + 32/9 R - 128 = 0, R=9.67.
        (16, 16, 3, 2.0, (9, 9)),
        (8, 24, 3, 1.71, None),
        (32, 8, 3, 3.0, None),
        (16, 16, 5, 1.71, None),
    ],
)
def test_rank_rule_matches_hand_computation(c_in, c_out, k, x, expected):
    hand = _hand_ranks(c_in, c_out, k, x)
    if expected is not None:
        assert hand == expected
    inputs = keras.Input((k + 2, k + 2, c_in))
    model = keras.Model(inputs, layers.Conv2D(c_out, k, name="c")(inputs))
    _, report = hos_keras.decompose(model, factor=x, return_report=True)
    assert report.layers["c"]["ranks"] == hand


def test_hooi_never_worse_than_hosvd():
    rng = np.random.default_rng(3)
    for shape, r3, r4 in [((3, 3, 10, 12), 4, 5), ((1, 3, 16, 8), 3, 2)]:
        kernel = rng.standard_normal(shape) + 0.5 * rng.standard_normal(shape) ** 3
        errors = []
        for max_iter in (0, 1, 50):
            core, u, v = _hooi(kernel, r3, r4, tol=0.0, max_iter=max_iter)
            approx = np.einsum("hwab,ia,ob->hwio", core, u, v)
            errors.append(np.linalg.norm(kernel - approx) / np.linalg.norm(kernel))
        assert errors[1] <= errors[0] + 1e-12
        assert errors[2] <= errors[1] + 1e-12


def test_hooi_recovers_a_low_multilinear_rank_kernel():
    # Independent of any library: an exact rank-(3, 4) kernel plus tiny noise.
    rng = np.random.default_rng(4)
    core = rng.standard_normal((3, 3, 3, 4))
    u = np.linalg.qr(rng.standard_normal((10, 3)))[0]
    v = np.linalg.qr(rng.standard_normal((9, 4)))[0]
    kernel = np.einsum("hwab,ia,ob->hwio", core, u, v)
    noise = 1e-6 * rng.standard_normal(kernel.shape)
    got_core, got_u, got_v = _hooi(kernel + noise, 3, 4, tol=1e-10, max_iter=50)
    approx = np.einsum("hwab,ia,ob->hwio", got_core, got_u, got_v)
    assert np.linalg.norm(approx - kernel) <= 2 * np.linalg.norm(noise)


def test_hooi_matches_tensorly_partial_tucker():
    # tensorly is a test dependency (setup.py "test" extra): the independent HOOI.
    import tensorly
    from tensorly.decomposition import partial_tucker

    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((3, 3, 12, 10))
    ours = _hooi(kernel, 5, 4, tol=1e-10, max_iter=200)
    ours_err = np.linalg.norm(kernel - np.einsum("hwab,ia,ob->hwio", *ours))
    result = partial_tucker(
        tensorly.tensor(kernel), rank=[5, 4], modes=[2, 3], n_iter_max=200, tol=1e-10
    )
    core, factors = result[0] if isinstance(result[0], tuple) else result
    theirs = np.einsum("hwab,ia,ob->hwio", core, *factors)
    theirs_err = np.linalg.norm(kernel - theirs)
    assert ours_err <= theirs_err * (1 + 1e-6)
    assert ours_err == pytest.approx(theirs_err, rel=1e-3)


def test_one_layer_params_and_macs_match_hand_count():
    inputs = keras.Input((8, 8, 12))
    model = keras.Model(inputs, layers.Conv2D(16, 3, padding="same", name="c")(inputs))
    _, report = hos_keras.decompose(
        model, layers=["c"], ranks={"c": (5, 7)}, return_report=True
    )
    entry = report.layers["c"]
    assert entry["params"] == {
        "original": 9 * 12 * 16 + 16,
        "decomposed": 12 * 5 + 9 * 5 * 7 + 7 * 16 + 16,
    }
    assert entry["macs"] == {
        "original": 64 * 9 * 12 * 16,
        "decomposed": 64 * (12 * 5 + 9 * 5 * 7 + 7 * 16),
    }
    _, report = hos_keras.decompose(
        model, method="fga", ranks={"c": (4, 3)}, return_report=True
    )
    entry = report.layers["c"]
    # Grouped 3x3: 4 groups of 3 inputs -> 4*3 outputs; then 1x1 12 -> 16.
    assert entry["params"]["decomposed"] == 9 * 3 * 12 + 12 * 16 + 16
    assert entry["macs"]["decomposed"] == 64 * (9 * 3 * 12 + 12 * 16)
    assert report.macs["decomposed"] == entry["macs"]["decomposed"]


def test_save_load_round_trip_and_profile(tmp_path):
    model = _small_model(sequential=True)
    new = hos_keras.decompose(model, factor=2.0)
    assert not isinstance(new, keras.Sequential) and new.name == "seq"
    assert [layer.name for layer in new.layers][1:4] == ["stem_in", "stem_core", "stem"]
    path = tmp_path / "decomposed.keras"
    new.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(X, verbose=0), new.predict(X, verbose=0), atol=1e-6
    )
    assert hos_keras.profile(loaded)["macs"] == hos_keras.profile(new)["macs"]
    assert hos_keras.profile(new)["macs"] < hos_keras.profile(model)["macs"]


def test_input_model_is_unchanged():
    model = _small_model()
    weights = [w.copy() for w in model.get_weights()]
    names = [layer.name for layer in model.layers]
    nodes = [len(layer._inbound_nodes) for layer in model.layers]
    hos_keras.decompose(model, method="fga", factor=2.0, return_report=True)
    assert [layer.name for layer in model.layers] == names
    assert [len(layer._inbound_nodes) for layer in model.layers] == nodes
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_nested_layers_are_copied_and_cannot_be_named():
    inner_in = keras.Input((6, 6, 8))
    inner = keras.Model(
        inner_in, layers.Conv2D(8, 3, padding="same", name="deep")(inner_in), name="blk"
    )
    inputs = keras.Input((6, 6, 8))
    x = layers.Conv2D(8, 3, padding="same", name="top")(inner(inputs))
    model = keras.Model(inputs, x)
    new = hos_keras.decompose(model, ranks="full")
    assert new.get_layer("blk").get_layer("deep").kernel.shape == (3, 3, 8, 8)
    assert new.get_layer("top_in").kernel.shape == (1, 1, 8, 8)
    with pytest.raises(UnknownNameError, match="'deep'"):
        hos_keras.decompose(model, layers=["deep"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "svd"}, UnknownNameError, "method='svd'"),
        ({"factor": 0.5}, InvalidArgumentError, "factor=0.5"),
        ({"layers": ["nope"]}, UnknownNameError, "'nope'"),
        ({"layers": ["bn"]}, InvalidArgumentError, "'bn' is a BatchNormalization"),
        ({"ranks": {"nope": (1, 1)}}, UnknownNameError, "'nope'"),
        ({"ranks": {"point": (1, 1)}}, InvalidArgumentError, "add it to `layers`"),
        ({"ranks": {"conv_a": (13, 2)}}, InvalidArgumentError, "R3 <= 8"),
        (
            {"method": "fga", "ranks": {"conv_a": (3, 2)}},
            InvalidArgumentError,
            "groups dividing 8",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        hos_keras.decompose(_small_model(), **kwargs)


def test_report_output_error_on_given_data():
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, layers.Conv2D(10, 3, padding="same", name="c")(inputs))
    with pytest.raises(InvalidArgumentError, match="fixed shape"):
        hos_keras.decompose(model, return_report=True, data=X)
    r3, _ = _hand_ranks(8, 10, 3, 1.71)
    assert hos_keras.decompose(model).get_layer("c_in").kernel.shape == (1, 1, 8, r3)
    inputs = keras.Input((12, 12, 8))
    model = keras.Model(inputs, layers.Conv2D(10, 3, padding="same", name="c")(inputs))
    new, report = hos_keras.decompose(model, factor=3.0, data=X, return_report=True)
    want = model.predict(X, verbose=0)
    expected = _rel(new.predict(X, verbose=0), want)
    assert report.layers["c"]["output_error"] == pytest.approx(expected, rel=1e-4)
    assert 0 < report.layers["c"]["kernel_error"] < 1


def test_no_selected_layer_warns_and_copies():
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, layers.Conv2D(4, 3, name="small_conv")(inputs))
    with pytest.warns(UserWarning, match="no layer"):
        new = hos_keras.decompose(model)
    assert len(new.layers) == 2
    assert new.get_layer("small_conv").kernel.shape == (3, 3, 4, 4)


def test_a_decomposed_model_plans_and_slims_like_any_other():
    decomposed = hos_keras.decompose(_small_model(), factor=1.5)
    plan = hos_keras.plan_pruning(
        decomposed, criterion="l1", allocation="fixed", ratio=0.5
    )
    # The factor convs' channels are ordinary groups of the planner.
    assert {"stem", "conv_a_in", "conv_a_core", "conv_b_in"} <= set(plan.groups)
    slim = hos_keras.slim_model(decomposed, plan)
    masked = hos_keras.mask_model(decomposed, plan)
    decoy = hos_keras.mask_model(decomposed, different_plan(plan))
    assert_equivalent(
        outputs(masked, X),
        outputs(slim, X),
        decoys=[outputs(decoy, X)],
        name=decomposed.name,
    )
    assert hos_keras.profile(slim)["macs"] == plan.macs_after


@pytest.mark.parametrize("method", ["tucker2", "fga"])
def test_factor_for_macs_is_the_least_factor_that_reaches_the_target(method):
    model = _small_model()
    macs = hos_keras.profile(model)["macs"]
    factor = hos_keras.factor_for_macs(model, 0.3, method, precision=0.01)
    reached = hos_keras.profile(hos_keras.decompose(model, method, factor))["macs"]
    assert reached <= 0.7 * macs
    if method == "tucker2":  # whose MACs fall monotonically with the factor
        # 2% less compression per layer no longer reaches it.
        short = hos_keras.profile(hos_keras.decompose(model, method, factor / 1.02))
        assert short["macs"] > 0.7 * macs
    with pytest.raises(InvalidArgumentError, match="macs_reduction=1.5"):
        hos_keras.factor_for_macs(model, 1.5)
    # Only conv_a decomposed: rank-1 factors cannot remove 99% of the MACs.
    with pytest.raises(InvalidArgumentError, match="removes at most"):
        hos_keras.factor_for_macs(model, 0.99, layers=["conv_a"])
