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


def test_small_network_totals_by_hand():
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(
        inputs
    )
    x = layers.ReLU()(layers.BatchNormalization(name="bn")(x))
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = layers.Conv2D(16, 1, name="pw")(y)
    x = layers.MaxPooling2D()(layers.Add(name="add")([x, y]))
    x = layers.Conv2D(32, 3, name="conv")(x)
    outputs = layers.Dense(10, name="fc")(layers.GlobalAveragePooling2D()(x))
    cost = hos_keras.profile(keras.Model(inputs, outputs))
    macs = {
        "stem": 16 * 16 * 9 * 3 * 16,  # 32x32 -> 16x16 (stride 2, same)
        "dw": 16 * 16 * 9 * 16,  # one 3x3 filter per channel
        "pw": 16 * 16 * 16 * 16,
        "conv": 6 * 6 * 9 * 16 * 32,  # 8x8 after the pooling -> 6x6 (valid)
        "fc": 32 * 10,
    }
    params = {
        "stem": 9 * 3 * 16,
        "bn": 4 * 16,  # gamma, beta, moving mean and variance
        "dw": 9 * 16 + 16,
        "pw": 16 * 16 + 16,
        "conv": 9 * 16 * 32 + 32,
        "fc": 32 * 10 + 10,
    }
    assert cost["macs"] == sum(macs.values()) == 379_200
    assert cost["params"] == sum(params.values())
    for name, value in macs.items():
        assert cost["layers"][name]["macs"] == value, name
    assert cost["layers"]["bn"]["macs"] == cost["layers"]["add"]["macs"] == 0


def _resnet50_macs() -> int:
    """ResNet-50 at 224x224 from He et al. 2016 (Table 1), as Keras builds it: the
    stride of a stage's first block is on its first 1x1 conv (ResNet "v1")."""
    macs = 112 * 112 * 7 * 7 * 3 * 64  # conv1
    size, c_in = 56, 64  # after the 3x3 max pool
    for filters, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            size //= stride if block == 0 else 1
            if block == 0:
                macs += size * size * c_in * 4 * filters  # projection shortcut
            macs += size * size * c_in * filters  # 1x1
            macs += size * size * 9 * filters * filters  # 3x3
            macs += size * size * filters * 4 * filters  # 1x1
            c_in = 4 * filters
    return macs + 2048 * 1000  # fc


def _mobilenet_v2_macs() -> int:
    """MobileNetV2 1.0 at 224x224 from Sandler et al. 2018 (Table 2: expansion t,
    channels c, repeats n, stride s)."""
    macs = 112 * 112 * 9 * 3 * 32  # first 3x3 conv, stride 2
    size, c_in = 112, 32
    table = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2))
    table += ((6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    for t, c, n, s in table:
        for block in range(n):
            if t != 1:
                macs += size * size * c_in * t * c_in  # 1x1 expansion
            size //= s if block == 0 else 1
            macs += size * size * 9 * t * c_in  # 3x3 depthwise
            macs += size * size * t * c_in * c  # 1x1 projection
            c_in = c
    return macs + size * size * c_in * 1280 + 1280 * 1000  # last 1x1 conv, fc


# Published multiply-adds at 224x224: ResNet-50 3.8 G (He et al. 2016, Table 1),
# MobileNetV2 300 M (Sandler et al. 2018, Table 4). They are rounded to two
# significant figures and leave the bias adds out, so they are checked to 2%; a
# real miscount is larger (the stride of ResNet-50 on the 3x3 conv, as in
# torchvision's "v1.5" and its often-quoted 4.1 G, is 6% more).
@pytest.mark.parametrize(
    "builder, by_hand, published",
    [
        (keras.applications.ResNet50, _resnet50_macs, 3.8e9),
        (keras.applications.MobileNetV2, _mobilenet_v2_macs, 300e6),
    ],
)
def test_applications_macs_by_hand_and_as_published(builder, by_hand, published):
    model = builder(weights=None)
    cost = hos_keras.profile(model)
    assert cost["params"] == model.count_params()
    assert cost["macs"] == by_hand()
    assert cost["macs"] == pytest.approx(published, rel=0.02)


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
