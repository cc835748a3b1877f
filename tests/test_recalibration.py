"""recalibrate_batchnorm: moving statistics against a hand computation of every
batch norm's inputs on the same images."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import hos_keras
from hos_keras.errors import InvalidArgumentError


def _model(frozen_bn=False):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, name="c1")(inputs)
    x = layers.BatchNormalization(name="b1", trainable=not frozen_bn)(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.5)(x)  # must stay off
    x = layers.Conv2D(5, 3, name="c2")(x)
    x = layers.BatchNormalization(name="b2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, name="out")(x))


def _images(n=100):
    rng = np.random.default_rng(0)
    # Far from what the initial moving statistics (0 and 1) describe.
    return (3.0 + 2.0 * rng.normal(size=(n, 8, 8, 3))).astype("float32")


def _by_hand(model, x, batch=64):
    """Each batch norm's inputs, every batch normalised by its own statistics
    (biased variance), the rest in inference mode; then their mean and variance
    over all the images."""
    b1 = model.get_layer("b1")
    inputs = {"b1": [], "b2": []}
    for start in range(0, len(x), batch):
        a = np.asarray(model.get_layer("c1")(x[start : start + batch]), np.float64)
        inputs["b1"].append(a)
        a = (a - a.mean((0, 1, 2))) / np.sqrt(a.var((0, 1, 2)) + b1.epsilon)
        a = np.maximum(a * b1.gamma.numpy() + b1.beta.numpy(), 0.0)  # ReLU
        a = np.asarray(model.get_layer("c2")(a.astype("float32")), np.float64)
        inputs["b2"].append(a)
    return {
        name: (np.concatenate(v).mean((0, 1, 2)), np.concatenate(v).var((0, 1, 2)))
        for name, v in inputs.items()
    }


@pytest.mark.parametrize("frozen_bn", [False, True])
def test_moving_statistics_equal_those_of_the_inputs_on_the_same_images(frozen_bn):
    model, x = _model(frozen_bn), _images()
    # Non-trivial gammas and betas, so that b1 shapes what b2 sees.
    b1 = model.get_layer("b1")
    b1.gamma.assign(np.linspace(0.5, 2.0, 6))
    b1.beta.assign(np.linspace(-1.0, 1.0, 6))
    weights = [w.numpy() for w in model.trainable_weights]
    seen = hos_keras.recalibrate_batchnorm(model, x)
    assert seen == {"b1": 100, "b2": 100}
    expected = _by_hand(model, x)
    for name, (mean, variance) in expected.items():
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-4)
    # No weight moved, and the layers are themselves again (no recording).
    for before, after in zip(weights, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    assert "call" not in vars(model.get_layer("b1"))
    # Inference now normalises b2's inputs: its outputs have mean beta (= 0).
    probe = keras.Model(model.input, model.get_layer("b2").output)
    assert np.abs(np.asarray(probe(x)).mean((0, 1, 2))).max() < 0.05


def test_dataset_steps_and_nested_models():
    inner = keras.Sequential(
        [keras.Input((6, 6, 6)), layers.Conv2D(4, 3), layers.BatchNormalization()],
        name="inner",
    )
    inputs = keras.Input((8, 8, 3))
    x = layers.BatchNormalization(name="b0")(layers.Conv2D(6, 3)(inputs))
    model = keras.Model(inputs, inner(x))
    x = _images(96)
    batches = tf.data.Dataset.from_tensor_slices((x, np.zeros(96))).batch(32)
    seen = hos_keras.recalibrate_batchnorm(model, batches, steps=2)
    assert seen == {"b0": 64, "inner/batch_normalization": 64}
    first = _images(96)[:64]
    conv = model.layers[1]
    expected = np.asarray(conv(first), np.float64).mean((0, 1, 2))
    np.testing.assert_allclose(
        model.get_layer("b0").moving_mean.numpy(), expected, rtol=1e-4
    )
    assert hos_keras.recalibrate_batchnorm(keras.Sequential([layers.Dense(2)]), x) == {}
    with pytest.raises(InvalidArgumentError, match="steps=0"):
        hos_keras.recalibrate_batchnorm(model, x, steps=0)
    with pytest.raises(InvalidArgumentError, match="type list"):
        hos_keras.recalibrate_batchnorm(model, [x])
