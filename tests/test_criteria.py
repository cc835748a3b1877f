"""Filter criteria on every supported layer type, against per-filter scipy loops."""

import keras
import numpy as np
import pytest
import scipy.stats
from keras import layers

import hos_keras
from hos_keras import criteria
from hos_keras.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    NonFiniteWeightsError,
    UnknownNameError,
)


def _reference_filters(layer):
    """Each output channel's weights, sliced by hand from Keras's kernel layout."""
    if isinstance(layer, layers.SeparableConv2D):
        kernel = layer.pointwise_kernel.numpy()
        return [kernel[..., f].ravel() for f in range(kernel.shape[-1])]
    kernel = layer.kernel.numpy()
    if isinstance(layer, (layers.Conv2DTranspose, layers.Conv1DTranspose)):
        return [kernel[..., f, :].ravel() for f in range(kernel.shape[-2])]
    if isinstance(layer, layers.DepthwiseConv2D):
        c_in, mult = kernel.shape[-2:]
        return [kernel[..., c, m].ravel() for c in range(c_in) for m in range(mult)]
    return [kernel[..., f].ravel() for f in range(kernel.shape[-1])]


def _model_with_every_layer_type(seed=0):
    rng = np.random.default_rng(seed)
    image = keras.Input((12, 12, 4))
    x = layers.Conv2D(6, 3, name="conv2d")(image)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise")(x)
    x = layers.SeparableConv2D(5, 3, name="separable")(x)
    x = layers.Conv2DTranspose(7, 3, name="transpose")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(9, name="dense")(x)
    seq = keras.Input((10, 3))
    y = layers.Conv1D(4, 3, name="conv1d")(seq)
    y = layers.GlobalAveragePooling1D()(y)
    vol = keras.Input((6, 6, 6, 2))
    z = layers.Conv3D(3, 2, name="conv3d")(vol)
    z = layers.GlobalAveragePooling3D()(z)
    out = layers.Concatenate()([x, y, z])
    model = keras.Model([image, seq, vol], out)
    for layer in model.layers:
        for weight in layer.weights:
            # Skewed, heavy-tailed weights so every statistic is far from zero.
            shape = tuple(weight.shape)
            weight.assign(rng.gamma(1.5, 0.1, shape) - 0.1)
    return model


STATISTICS = ["k3", "k4", "k34", "skew", "kurtosis", "skew_kurtosis"]


def _scipy_statistic(statistic, w):
    w = w.astype(np.float64)
    if statistic == "k3":
        return scipy.stats.kstat(w, 3)
    if statistic == "k4":
        return scipy.stats.kstat(w, 4)
    if statistic == "k34":
        return scipy.stats.kstat(w, 3) * scipy.stats.kstat(w, 4)
    if statistic == "skew":
        return scipy.stats.skew(w)
    if statistic == "kurtosis":
        return scipy.stats.kurtosis(w)
    return scipy.stats.skew(w) * scipy.stats.kurtosis(w)


@pytest.fixture(scope="module")
def model():
    return _model_with_every_layer_type()


@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("statistic", STATISTICS)
def test_hos_criteria_match_scipy_on_every_layer_type(model, statistic, absolute):
    name = ("abs_" if absolute else "") + statistic
    scores = hos_keras.score_filters(model, criterion=name)
    expected_layers = {
        "conv2d",
        "depthwise",
        "separable",
        "transpose",
        "dense",
        "conv1d",
        "conv3d",
    }
    assert set(scores) == expected_layers
    for layer_name in expected_layers:
        layer = model.get_layer(layer_name)
        expected = np.array(
            [_scipy_statistic(statistic, w) for w in _reference_filters(layer)]
        )
        if absolute:
            expected = np.abs(expected)
        np.testing.assert_allclose(
            scores[layer_name], expected, rtol=1e-6, err_msg=layer_name
        )


def test_norm_criteria(model):
    l1 = hos_keras.score_filters(model, criterion="l1")
    l2 = hos_keras.score_filters(model, criterion="l2")
    for layer_name in l1:
        filters = _reference_filters(model.get_layer(layer_name))
        np.testing.assert_allclose(
            l1[layer_name],
            [np.abs(w.astype(np.float64)).sum() for w in filters],
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            l2[layer_name],
            [np.linalg.norm(w.astype(np.float64)) for w in filters],
            rtol=1e-6,
        )


def test_random_criterion_is_seeded(model):
    a = hos_keras.score_filters(model, criterion="random", seed=3)
    b = hos_keras.score_filters(model, criterion="random", seed=3)
    c = hos_keras.score_filters(model, criterion="random", seed=4)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])
        assert np.all((a[name] >= 0) & (a[name] < 1))
    assert not np.array_equal(a["conv2d"][:3], a["transpose"][:3])


@pytest.mark.parametrize(
    "name",
    ["k3", "k4", "k34", "skew", "kurtosis", "skew_kurtosis", "abs_k34", "abs_skew"],
)
@pytest.mark.parametrize("value", [0.0, 0.37, -2.5])
def test_constant_filter_is_finite_and_ranked_least_informative(name, value):
    rng = np.random.default_rng(1)
    filters = rng.gamma(1.5, 0.1, (27, 6)).astype(np.float32) - 0.1
    filters[:, 2] = value
    scores = criteria.get_criterion(name)(filters)
    assert np.all(np.isfinite(scores))
    assert scores[2] == criteria.LEAST_INFORMATIVE_SCORE
    assert np.argmin(scores) == 2
    assert np.all(scores[np.arange(6) != 2] > scores[2])


def test_registry_lists_names_and_accepts_new_criteria():
    names = criteria.criterion_names()
    for name in STATISTICS + ["abs_" + s for s in STATISTICS] + ["l1", "l2", "random"]:
        assert name in names
    with pytest.raises(UnknownNameError, match="k34"):
        criteria.get_criterion("k5")
    with pytest.raises(ArgumentTypeError, match="criterion name or a callable"):
        criteria.get_criterion(3)

    def max_abs():
        return lambda filters: np.abs(filters).max(axis=0)

    criteria.register_criterion("test_max_abs", max_abs)
    try:
        with pytest.raises(InvalidArgumentError, match="already registered"):
            criteria.register_criterion("test_max_abs", max_abs)
        filters = np.arange(12.0).reshape(3, 4) - 5
        np.testing.assert_array_equal(
            criteria.get_criterion("test_max_abs")(filters), [5, 4, 5, 6]
        )
    finally:
        criteria._REGISTRY.pop("test_max_abs")


def test_callable_criterion_and_bad_outputs(model):
    scores = hos_keras.score_filters(model, criterion=lambda f: -f.sum(axis=0))
    assert scores["dense"].shape == (9,)
    with pytest.raises(InvalidArgumentError, match="one score per filter"):
        hos_keras.score_filters(model, criterion=lambda f: f.sum())
    with pytest.raises(InvalidArgumentError, match="non-finite"):
        hos_keras.score_filters(model, criterion=lambda f: f.sum(axis=0) * np.nan)


def test_nan_weights_name_the_layer():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="bad_dense")])
    kernel = model.get_layer("bad_dense").kernel
    values = kernel.numpy()
    values[1, 2] = np.inf
    kernel.assign(values)
    with pytest.raises(NonFiniteWeightsError, match="bad_dense"):
        hos_keras.score_filters(model)


def test_too_few_weights_for_k4_names_the_layer():
    model = keras.Sequential([keras.Input((3,)), layers.Dense(5, name="tiny")])
    with pytest.raises(InvalidArgumentError, match="'tiny'.*at least 4 weights"):
        hos_keras.score_filters(model, criterion="k34")
    assert hos_keras.score_filters(model, criterion="l1")["tiny"].shape == (5,)


def test_nested_model_layers_are_scored_with_qualified_names():
    inner = keras.Sequential(
        [keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="inner_conv")],
        name="backbone",
    )
    outer_in = keras.Input((8, 8, 3))
    x = inner(outer_in)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(2, name="head")(x)
    scores = hos_keras.score_filters(keras.Model(outer_in, out))
    assert set(scores) == {"backbone/inner_conv", "head"}


# FPGM, LAMP and the group criteria (bn_scale, user-defined).


def test_fpgm_is_the_summed_distance_to_the_other_filters():
    filters = np.random.default_rng(3).normal(size=(18, 7))
    expected = [
        sum(np.linalg.norm(filters[:, i] - filters[:, j]) for j in range(7))
        for i in range(7)
    ]
    scores = criteria.get_criterion("fpgm")(filters)
    np.testing.assert_allclose(scores, expected, rtol=1e-7)
    # A filter at the centre of the others is the one to go, not the smallest.
    spread = np.array([[0.0, 4.0, -4.0, 0.0, 0.1], [0.0, 0.0, 0.0, 4.0, 0.1]]) + 10
    assert int(np.argmin(criteria.get_criterion("fpgm")(spread))) == 4


def test_lamp_divides_each_norm_by_the_norms_at_least_as_large():
    filters = np.array([[1.0, 0.0, 2.0, 0.5], [1.0, 3.0, 0.0, 0.5]])
    norms = [2.0, 9.0, 4.0, 0.5]  # squared L2 norms of the columns
    expected = [n / sum(m for m in norms if m >= n) for n in norms]
    scores = criteria.get_criterion("lamp")(filters)
    np.testing.assert_allclose(scores, expected)
    assert scores.max() == 1.0  # the largest filter of every layer scores 1
    assert list(np.argsort(scores)) == list(np.argsort(norms))


def _bn_model():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    y = layers.Conv2D(6, 3, padding="same", name="c2")(x)
    y = layers.BatchNormalization(name="bn2")(y)
    x = layers.Add(name="add")([x, y])  # c1 and c2 share one group
    x = layers.Conv2D(5, 1, name="c3")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(4, name="hidden")(x)
    model = keras.Model(inputs, layers.Dense(2, name="out")(x))
    rng = np.random.default_rng(0)
    for name in ("bn1", "bn2"):
        gamma = model.get_layer(name).gamma
        gamma.assign(rng.normal(size=gamma.shape).astype("float32"))
    return model


def test_bn_scale_scores_channels_by_the_mean_gamma_of_their_batch_norms():
    model = _bn_model()
    plan = hos_keras.plan_pruning(
        model, criterion="bn_scale", allocation="fixed", ratio=0.5
    )
    gamma1 = np.abs(model.get_layer("bn1").gamma.numpy())
    gamma2 = np.abs(model.get_layer("bn2").gamma.numpy())
    group = plan["c1"]
    assert set(group.producers) == {"c1", "c2"}
    np.testing.assert_allclose(group.scores, (gamma1 + gamma2) / 2, rtol=1e-6)
    assert sorted(group.keep.tolist()) == sorted(
        np.argsort(-(gamma1 + gamma2))[:3].tolist()
    )
    # c3 and hidden have no batch norm: the L1 norm of their filters.
    c3 = model.get_layer("c3").kernel.numpy()
    np.testing.assert_allclose(
        plan["c3"].scores, np.abs(c3).sum(axis=(0, 1, 2)), rtol=1e-6
    )
    with pytest.raises(InvalidArgumentError, match="'c3'.*skip"):
        hos_keras.plan_pruning(
            model,
            criterion=criteria.BNScaleCriterion(fallback=None),
            allocation="fixed",
            ratio=0.5,
        )
    with pytest.raises(ArgumentTypeError, match="whole channel groups"):
        hos_keras.score_filters(model, criterion="bn_scale")


def test_a_user_group_criterion_sees_producers_batch_norms_and_consumers():
    model = _bn_model()
    seen = {}

    class ConsumerL1(criteria.GroupCriterion):
        name = "consumer_l1"

        def score_group(self, group):
            seen[group.name] = group
            parts = [
                group.gather(np.abs(layer.kernel.numpy()).sum(axis=(0, 1, 3)), at)
                for layer, at in group.consumers.values()
                if len(layer.kernel.shape) == 4
            ] or [np.arange(group.channels, dtype=float)]
            return np.nanmean(parts, axis=0)

    plan = hos_keras.plan_pruning(
        model, criterion=ConsumerL1(), allocation="fixed", ratio=0.5
    )
    group = seen["c1"]
    assert set(group.producers) == {"c1", "c2"}
    assert set(group.per_channel) == {"bn1", "bn2"}
    # c2 reads c1's channels directly, c3 reads the sum.
    assert set(group.consumers) == {"c2", "c3"}
    for _, positions in group.producers.values():
        assert sorted(positions.tolist()) == list(range(6))
    reads = [
        np.abs(model.get_layer(n).kernel.numpy()).sum(axis=(0, 1, 3))
        for n in ("c2", "c3")
    ]
    np.testing.assert_allclose(plan["c1"].scores, np.mean(reads, axis=0), rtol=1e-6)
    # Registered by name like any criterion.
    criteria.register_criterion("test_consumer_l1", ConsumerL1)
    try:
        named = hos_keras.plan_pruning(
            model, criterion="test_consumer_l1", allocation="fixed", ratio=0.5
        )
        np.testing.assert_array_equal(named["c1"].scores, plan["c1"].scores)
        assert named.criterion == "consumer_l1"
    finally:
        criteria._REGISTRY.pop("test_consumer_l1")

    class Wrong(criteria.GroupCriterion):
        def score_group(self, group):
            return np.zeros(group.channels + 1)

    with pytest.raises(InvalidArgumentError, match="must return 6 finite scores"):
        hos_keras.plan_pruning(model, criterion=Wrong(), allocation="fixed", ratio=0.5)
