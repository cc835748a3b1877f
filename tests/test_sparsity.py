"""GroupSparsity: with no task gradient, every weight follows the penalty's own
update, computed here by hand from the channels' l1 scores."""

import keras
import numpy as np
import pytest
from keras import layers

import hos_keras
from hos_keras.errors import InvalidArgumentError


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="b1")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(5, 3, name="c2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(3, name="out")(x))
    model.get_layer("b1").gamma.assign([0.5, -0.01, 1.0, 0.012])
    return model


def _fit(model, callback, lr=0.1, n=24, batch=8):
    # A loss with no gradient: only the penalty moves the weights.
    model.compile(keras.optimizers.SGD(lr), loss=lambda y, p: 0.0 * keras.ops.sum(p))
    x = np.random.default_rng(0).normal(size=(n, 6, 6, 3)).astype("float32")
    model.fit(
        x, np.zeros(n), batch_size=batch, epochs=1, callbacks=[callback], verbose=0
    )
    return n // batch  # steps


def _gamma(scores, alpha):
    return alpha ** ((scores.max() - scores) / (scores.max() - scores.min()))


def test_group_norm_shrinks_each_targeted_channel_by_its_scale():
    model = _model()
    before = {w.path: w.numpy() for w in model.trainable_weights}
    lr, strength, alpha = 0.1, 0.05, 4.0
    callback = hos_keras.GroupSparsity(
        "l1", strength=strength, alpha=alpha, skip=["c2"]
    )
    steps = _fit(model, callback, lr)
    kernel = before["c1/kernel"]
    gamma = _gamma(np.abs(kernel).sum(axis=(0, 1, 2)), alpha)  # c1's channels
    np.testing.assert_allclose(callback.scales["c1"], gamma, rtol=1e-6)
    assert set(callback.scales) == {"c1"}  # c2 skipped

    def shrunk(axis_gamma):
        return (1.0 - lr * strength * axis_gamma) ** steps

    expected = {
        # c1's filters (output channels), bias, and b1's gamma and beta.
        "c1/kernel": kernel * shrunk(gamma),
        "c1/bias": before["c1/bias"] * shrunk(gamma),
        "b1/gamma": before["b1/gamma"] * shrunk(gamma),
        "b1/beta": before["b1/beta"] * shrunk(gamma),
        # c2 reads c1's channels: its input rows; c2's own channels are skipped.
        "c2/kernel": before["c2/kernel"] * shrunk(gamma)[:, None],
        "c2/bias": before["c2/bias"],
        "out/kernel": before["out/kernel"],
        "out/bias": before["out/bias"],
    }
    after = {w.path: w.numpy() for w in model.trainable_weights}
    for path, value in expected.items():
        np.testing.assert_allclose(
            after[path], value, rtol=1e-5, atol=1e-7, err_msg=path
        )
    # The least important channel lost the most.
    norms = np.sqrt((model.get_layer("c1").get_weights()[0] ** 2).sum((0, 1, 2)))
    ratio = norms / np.sqrt((kernel**2).sum((0, 1, 2)))
    assert np.argmin(ratio) == np.argmax(gamma)


def test_bn_l1_soft_thresholds_the_batch_norm_scales():
    model = _model()
    before = {w.path: w.numpy() for w in model.trainable_weights}
    lr, strength = 0.1, 0.05
    steps = _fit(model, hos_keras.GroupSparsity("l1", "bn_l1", strength=strength), lr)
    g = before["b1/gamma"]
    expected = np.sign(g) * np.maximum(np.abs(g) - steps * lr * strength, 0.0)
    got = model.get_layer("b1").gamma.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.sum(got == 0) == 2  # the two small scales reached exactly zero
    for w in model.trainable_weights:
        if w.path != "b1/gamma":
            np.testing.assert_array_equal(w.numpy(), before[w.path])


def test_bad_arguments_and_nothing_to_penalise():
    with pytest.raises(InvalidArgumentError, match="method='l2'"):
        hos_keras.GroupSparsity(method="l2")
    with pytest.raises(InvalidArgumentError, match="strength=-1"):
        hos_keras.GroupSparsity(strength=-1)
    with pytest.raises(InvalidArgumentError, match="alpha=0.5"):
        hos_keras.GroupSparsity(alpha=0.5)
    plain = keras.Sequential(
        [keras.Input((6, 6, 3)), layers.Conv2D(4, 3), layers.Flatten(), layers.Dense(2)]
    )
    with pytest.raises(InvalidArgumentError, match="no BatchNormalization"):
        _fit(plain, hos_keras.GroupSparsity("l1", "bn_l1"))
