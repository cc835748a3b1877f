"""Which layers find_prunable_layers lets go, and why it freezes the others."""

import keras
import pytest
from keras import layers

import hos_keras


def _analyse(build):
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, build(inputs))
    prunable, frozen = hos_keras.find_prunable_layers(model)
    return {p.name: p for p in prunable}, frozen


def _head(x, name="head"):
    return layers.Dense(3, name=name)(layers.GlobalAveragePooling2D()(x))


@pytest.mark.parametrize(
    "merge, reason",
    [
        (lambda a, b: layers.Add(name="merge")([a, b]), "'merge' (Add)"),
        (lambda a, b: layers.Multiply(name="merge")([a, b]), "'merge' (Multiply)"),
        (
            lambda a, b: layers.Concatenate(name="merge")([a, b]),
            "'merge' (Concatenate)",
        ),
        (lambda a, b: layers.Maximum(name="merge")([a, b]), "'merge' (Maximum)"),
    ],
)
def test_merges_freeze_their_producers(merge, reason):
    def build(x):
        a = layers.Conv2D(6, 3, padding="same", name="a")(x)
        b = layers.Conv2D(6, 1, name="b")(x)
        b = layers.BatchNormalization(name="b_bn")(b)
        return _head(merge(a, b))

    prunable, frozen = _analyse(build)
    assert not prunable
    assert reason in frozen["a"] and reason in frozen["b"]


def test_flatten_reshape_lambda_and_layernorm_freeze():
    def build(x):
        a = layers.Conv2D(4, 3, name="to_flatten")(x)
        a = layers.Dense(2, name="d1")(layers.Flatten()(a))
        b = layers.Conv2D(4, 3, name="to_lambda")(x)
        b = layers.Lambda(lambda t: t * 2.0, name="double")(b)
        b = layers.Dense(2, name="d2")(layers.GlobalAveragePooling2D()(b))
        c = layers.Conv2D(4, 3, name="to_ln")(x)
        c = layers.LayerNormalization(name="ln")(c)
        c = layers.Dense(2, name="d3")(layers.GlobalAveragePooling2D()(c))
        d = layers.Conv2D(4, 3, name="to_softmax")(x)
        d = layers.Activation("softmax", name="sm")(d)
        d = layers.Conv2D(2, 1, name="after_sm")(d)
        d = layers.Dense(2, name="d4")(layers.GlobalAveragePooling2D()(d))
        return layers.Concatenate()([a, b, c, d])

    prunable, frozen = _analyse(build)
    assert "Flatten" in frozen["to_flatten"]
    assert "'double' (Lambda)" in frozen["to_lambda"]
    assert "LayerNormalization" in frozen["to_ln"]
    assert "softmax" in frozen["to_softmax"]
    assert set(prunable) == {"after_sm"}


def test_depthwise_and_separable_chain():
    def build(x):
        x = layers.Conv2D(8, 1, name="expand")(x)
        x = layers.BatchNormalization(name="expand_bn")(x)
        x = layers.ReLU(6.0, name="relu6")(x)
        x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
        x = layers.BatchNormalization(name="dw_bn")(x)
        x = layers.SeparableConv2D(5, 3, name="sep")(x)
        return _head(x)

    prunable, frozen = _analyse(build)
    assert prunable["expand"].followers == ("expand_bn", "relu6", "dw", "dw_bn")
    assert prunable["expand"].consumers == ("sep",)
    assert "depthwise" in frozen["dw"]
    assert prunable["sep"].consumers == ("head",)


def test_branching_to_several_consumers():
    def build(x):
        x = layers.Conv2D(6, 3, padding="same", name="trunk")(x)
        x = layers.ReLU()(x)
        a = layers.Conv2D(4, 1, name="left")(x)
        b = layers.Conv2D(4, 1, name="right")(x)
        return layers.Concatenate()(
            [_head(a), layers.Dense(3, name="h2")(layers.GlobalMaxPooling2D()(b))]
        )

    prunable, _ = _analyse(build)
    assert set(prunable["trunk"].consumers) == {"left", "right"}


def test_grouped_conv_shared_layer_nested_model_and_channels_first():
    shared = layers.Conv2D(4, 1, name="shared")

    def build(x):
        g = layers.Conv2D(8, 3, padding="same", name="before_group")(x)
        g = layers.Conv2D(8, 3, padding="same", groups=2, name="grouped")(g)
        s = shared(layers.Conv2D(4, 1, name="before_shared")(x))
        s = shared(s)
        inner = keras.Sequential(
            [keras.Input((8, 8, 4)), layers.Conv2D(4, 3, name="inner")], name="sub"
        )
        n = inner(layers.Conv2D(4, 1, name="before_nested")(x))
        f = layers.Permute((3, 1, 2))(x)
        f = layers.Conv2D(5, 3, data_format="channels_first", name="cf1")(f)
        f = layers.BatchNormalization(axis=1, name="cf_bn")(f)
        f = layers.Conv2D(5, 3, data_format="channels_first", name="cf2")(f)
        f = layers.GlobalAveragePooling2D(data_format="channels_first")(f)
        f = layers.Dense(3, name="cf_head")(f)
        return layers.Concatenate()([_head(g), _head(s, "h2"), _head(n, "h3"), f])

    prunable, frozen = _analyse(build)
    assert "grouped convolution" in frozen["before_group"]
    assert "grouped convolution" in frozen["grouped"]
    assert "shared" in frozen["before_shared"] and "shared" in frozen["shared"]
    assert "nested model 'sub'" in frozen["before_nested"]
    assert prunable["cf1"].followers == ("cf_bn",)
    assert prunable["cf1"].consumers == ("cf2",)
    assert prunable["cf2"].consumers == ("cf_head",)


def test_channels_first_dense_on_spatial_axis_is_frozen():
    def build(x):
        f = layers.Permute((3, 1, 2))(x)
        f = layers.Conv2D(5, 3, data_format="channels_first", name="cf")(f)
        return layers.Dense(2, name="on_width")(f)

    _, frozen = _analyse(build)
    assert "another axis" in frozen["cf"]


def test_reference_networks_prune_what_the_paper_prunes():
    """METHOD.md section 3: found automatically, not hand-picked."""
    resnet = hos_keras.models.resnet56()
    prunable, _ = hos_keras.find_prunable_layers(resnet)
    assert [p.name for p in prunable] == [
        f"stage{s}_block{b}_conv1" for s in (1, 2, 3) for b in range(1, 10)
    ]
    assert all(p.consumers == (p.name.replace("conv1", "conv2"),) for p in prunable)

    v1 = hos_keras.models.cifar_mobilenet(input_shape=(16, 16, 3), alpha=0.25)
    prunable = {p.name: p for p in hos_keras.find_prunable_layers(v1)[0]}
    assert set(prunable) == {"stem_conv"} | {f"block{i}_pw" for i in range(1, 14)}
    assert "block2_dw" in prunable["block1_pw"].followers
    assert prunable["block13_pw"].consumers == ("logits",)

    v2 = hos_keras.models.cifar_mobilenet_v2(input_shape=(16, 16, 3), alpha=0.5)
    prunable = {p.name for p in hos_keras.find_prunable_layers(v2)[0]}
    # Every expansion conv, plus the layers whose outputs feed no residual Add:
    # the stem, the projections of blocks 1 and 17 (width changes next) and the head.
    assert prunable == {f"block{i}_expand" for i in range(2, 18)} | {
        "stem_conv",
        "block1_project",
        "block17_project",
        "head_conv",
    }
