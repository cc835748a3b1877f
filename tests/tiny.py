"""The small models and data the unit tests share (see conftest's fixtures).

Each builder makes a fresh model, seeded, in a second or less; tests that need
another shape pass arguments rather than writing their own network.
"""

import keras
import numpy as np
from keras import layers


def cnn(widths=(8, 12, 16), *, seed=0, name="cnn", input_shape=(10, 10, 3)):
    """conv-bn-relu x2, pool, conv-relu, GAP, Dense "logits" (10 classes): three
    prunable convs c1..c3 whose weights follow different distributions (normal,
    shifted gamma, Student's t, Laplace for the Dense), so that the layer
    statistics and the filter scores all differ."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(widths[0], 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="r1")(x)
    x = layers.Conv2D(widths[1], 3, padding="same", name="c2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="r2")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Conv2D(widths[2], 3, activation="relu", name="c3")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.Dense)):
            shape = tuple(layer.kernel.shape)
            draws = {
                "c1": rng.normal(size=shape),
                "c2": rng.gamma(2.0, 1.0, shape) - 2.0,
                "c3": rng.standard_t(3, shape),
                "logits": rng.laplace(size=shape),
            }[layer.name]
            layer.kernel.assign(0.1 * draws)
    return model


def residual_cnn(*, seed=0, input_shape=(8, 8, 3), classes=3):
    """c1-bn1-relu, c2 added back onto it (one group across the Add), c3, GAP,
    Dense "out"."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    y = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = layers.Add()([x, y])
    x = layers.Conv2D(6, 3, name="c3")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="out")(x))


def chain(
    widths,
    *,
    input_shape,
    classes=3,
    activation="relu",
    head="out",
    seed=0,
    name="tiny",
):
    """Convs c1..cN (3x3, same padding, `activation` inside), GAP, Dense `head`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = inputs
    for i, width in enumerate(widths, 1):
        x = layers.Conv2D(
            width, 3, padding="same", activation=activation, name=f"c{i}"
        )(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, name=head)(x), name=name)


def images(n, shape, *, classes=3, seed=0):
    """`n` standard-normal float32 images and integer labels cycling over
    `classes`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    return x, (np.arange(n) % classes).astype("int32")
