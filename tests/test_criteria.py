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
