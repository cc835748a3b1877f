"""hos_keras.profile against hand-computed parameter and MAC counts."""

import keras
import pytest
from keras import layers

import hos_keras
from hos_keras.errors import UnsupportedModelError


def _single(layer, input_shape):
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, layer(inputs))
    return hos_keras.profile(model)["layers"][layer.name]


def test_conv2d_strides_and_padding():
    # 9x9 input, stride 2, valid: out 4x4. MACs = 16 * 3*3 * 5 * 8.
    cost = _single(layers.Conv2D(8, 3, strides=2, name="c"), (9, 9, 5))
    assert cost == {
        "type": "Conv2D",
        "params": 3 * 3 * 5 * 8 + 8,
        "macs": 4 * 4 * 9 * 5 * 8,
    }
    # same padding, stride 2: out ceil(9/2)=5.
    cost = _single(
        layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c"),
        (9, 9, 5),
    )
    assert cost["macs"] == 5 * 5 * 9 * 5 * 8
    assert cost["params"] == 3 * 3 * 5 * 8


def test_grouped_conv():
    cost = _single(layers.Conv2D(12, 3, groups=3, padding="same", name="g"), (6, 6, 6))
    assert cost["params"] == 3 * 3 * 2 * 12 + 12
    assert cost["macs"] == 6 * 6 * 9 * 2 * 12


def test_depthwise_and_separable():
    cost = _single(layers.DepthwiseConv2D(3, depth_multiplier=2, name="d"), (7, 7, 4))
    assert cost["params"] == 3 * 3 * 4 * 2 + 8
    assert cost["macs"] == 5 * 5 * 9 * 4 * 2
    cost = _single(
        layers.SeparableConv2D(10, 3, depth_multiplier=2, name="s"), (7, 7, 4)
    )
    assert cost["params"] == 9 * 4 * 2 + 4 * 2 * 10 + 10
    assert cost["macs"] == 5 * 5 * (9 * 4 * 2 + 4 * 2 * 10)


def test_dense_conv1d_conv3d_and_transpose():
    cost = _single(layers.Dense(7, name="fc"), (11,))
    assert cost == {"type": "Dense", "params": 11 * 7 + 7, "macs": 11 * 7}
    cost = _single(layers.Dense(7, name="fc"), (5, 11))
    assert cost["macs"] == 5 * 11 * 7
    cost = _single(layers.Conv1D(4, 3, name="c1"), (10, 2))
    assert cost["macs"] == 8 * 3 * 2 * 4
    cost = _single(layers.Conv3D(3, 2, name="c3"), (4, 4, 4, 2))
    assert cost["macs"] == 27 * 8 * 2 * 3
    # Transposed: each input pixel scatters k*k*c_out products per input channel.
    cost = _single(layers.Conv2DTranspose(6, 3, strides=2, name="t"), (5, 5, 4))
    assert cost["params"] == 9 * 6 * 4 + 6
    assert cost["macs"] == 5 * 5 * 9 * 4 * 6


def test_channels_first_conv():
    cost = _single(
        layers.Conv2D(8, 3, data_format="channels_first", name="cf"), (5, 9, 9)
    )
    assert cost["macs"] == 7 * 7 * 9 * 5 * 8


def test_totals_equal_count_params_and_shared_layers_count_macs_per_call():
    shared = layers.Dense(4, name="shared")
    a, b = keras.Input((3,)), keras.Input((3,))
    out = layers.Concatenate()([shared(a), shared(b)])
    out = layers.BatchNormalization()(out)
    model = keras.Model([a, b], out)
    cost = hos_keras.profile(model)
    assert cost["params"] == model.count_params() == 3 * 4 + 4 + 4 * 8
    assert cost["layers"]["shared"]["macs"] == 2 * 3 * 4
    assert cost["macs"] == 24


@pytest.mark.parametrize(
    "builder", [keras.applications.MobileNetV2, keras.applications.ResNet50]
)
def test_params_of_applications_equal_count_params(builder):
    model = builder(weights=None, input_shape=(64, 64, 3), classes=10)
    cost = hos_keras.profile(model)
    assert cost["params"] == model.count_params()
    assert cost["macs"] > 0


def test_channel_overrides():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="a")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Conv2D(5, 3, padding="same", name="b")(x)
    model = keras.Model(inputs, x)
    cost = hos_keras.profile(
        model, in_channels={"bn": 4, "b": 4}, out_channels={"a": 4, "bn": 4}
    )
    assert cost["layers"]["a"] == {
        "type": "Conv2D",
        "params": 9 * 3 * 4 + 4,
        "macs": 64 * 9 * 3 * 4,
    }
    assert cost["layers"]["bn"]["params"] == 4 * 4
    assert cost["layers"]["b"]["macs"] == 64 * 9 * 4 * 5


def test_nested_model_is_counted_through():
    inner = keras.Sequential(
        [keras.Input((6, 6, 2)), layers.Conv2D(3, 3, name="ic")], name="inner"
    )
    inputs = keras.Input((6, 6, 2))
    out = layers.Flatten()(inner(inputs))
    model = keras.Model(inputs, layers.Dense(2, name="d")(out))
    cost = hos_keras.profile(model)
    assert cost["layers"]["inner/ic"]["macs"] == 16 * 9 * 2 * 3
    assert cost["params"] == model.count_params()
    assert cost["macs"] == 16 * 9 * 2 * 3 + 48 * 2


def test_subclassed_model_is_rejected_with_advice():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(keras.ops.zeros((1, 3)))
    with pytest.raises(UnsupportedModelError, match="functional"):
        hos_keras.profile(net)
