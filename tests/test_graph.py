"""channel_groups: which channels are tied together, and why others are frozen."""

import keras
import numpy as np
import pytest
from keras import layers

import hos_keras
from hos_keras import graph as graph_lib


def _analyse(build, shape=(8, 8, 4)):
    inputs = keras.Input(shape)
    model = keras.Model(inputs, build(inputs))
    graph = hos_keras.channel_groups(model, warn=False)
    return {g.name: g for g in graph.groups}, graph


def _head(x, name="head"):
    return layers.Dense(3, name=name)(layers.GlobalAveragePooling2D()(x))


@pytest.mark.parametrize(
    "merge",
    [layers.Add, layers.Subtract, layers.Multiply, layers.Maximum, layers.Average],
)
def test_elementwise_merges_tie_their_inputs_into_one_group(merge):
    def build(x):
        a = layers.Conv2D(6, 3, padding="same", name="a")(x)
        b = layers.Conv2D(6, 1, name="b")(x)
        b = layers.BatchNormalization(name="b_bn")(b)
        return _head(merge(name="merge")([a, b]))

    groups, graph = _analyse(build)
    (group,) = [g for g in groups.values() if "a" in g.producers]
    assert set(group.producers) == {"a", "b"}
    assert set(group.members) == {"a", "b", "b_bn", "head"}
    assert group.prunable
    np.testing.assert_array_equal(graph.outputs["a"], graph.outputs["b"])


def test_squeeze_excitation_broadcast_multiply():
    def build(x):
        x = layers.Conv2D(8, 3, padding="same", name="body")(x)
        s = layers.GlobalAveragePooling2D(keepdims=True)(x)
        s = layers.Conv2D(2, 1, activation="relu", name="se_reduce")(s)
        s = layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
        x = layers.Multiply(name="excite")([x, s])
        return _head(x)

    groups, _ = _analyse(build)
    assert groups["body"].producers == ("body", "se_expand")
    assert "se_reduce" in groups["body"].members  # reads body's channels
    assert groups["se_reduce"].members == ("se_reduce", "se_expand")
    assert groups["body"].prunable and groups["se_reduce"].prunable


def test_concatenate_keeps_groups_apart_with_offsets():
    def build(x):
        a = layers.Conv2D(3, 3, padding="same", name="a")(x)
        b = layers.Conv2D(5, 3, padding="same", name="b")(x)
        c = layers.Concatenate(name="cat")([a, b])
        return _head(layers.Conv2D(4, 1, name="after")(c))

    groups, graph = _analyse(build)
    assert groups["a"].producers == ("a",) and groups["b"].producers == ("b",)
    assert groups["a"].prunable and groups["b"].prunable
    after = graph.inputs["after"]
    np.testing.assert_array_equal(after[:3], graph.outputs["a"])
    np.testing.assert_array_equal(after[3:], graph.outputs["b"])


def test_flatten_to_dense_maps_each_channel_to_strided_rows():
    def build(x):
        x = layers.Conv2D(3, 3, name="conv")(x)  # 6x6x3
        x = layers.Flatten()(x)
        return layers.Dense(2, name="fc")(x)

    groups, graph = _analyse(build)
    assert groups["conv"].prunable and "fc" in groups["conv"].members
    rows = graph.inputs["fc"]
    assert len(rows) == 6 * 6 * 3
    np.testing.assert_array_equal(rows[:6], np.tile(graph.outputs["conv"], 2))


def test_unknown_and_coupling_layers_freeze_with_reasons():
    def build(x):
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
        e = layers.Conv2D(4, 3, name="to_reshape")(x)
        e = layers.Reshape((24, 6))(e)
        e = layers.Dense(2, name="d5")(layers.GlobalAveragePooling1D()(e))
        return layers.Concatenate()([b, c, d, e])

    groups, _ = _analyse(build)
    assert "'double' (Lambda)" in groups["to_lambda"].frozen
    assert "LayerNormalization" in groups["to_ln"].frozen
    assert "softmax" in groups["to_softmax"].frozen
    assert "Reshape" in groups["to_reshape"].frozen
    assert groups["after_sm"].prunable


def test_unknown_layer_warns_with_its_name():
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.Lambda(lambda t: t + 1.0, name="plus_one")(x)
    model = keras.Model(inputs, _head(x))
    with pytest.warns(UserWarning, match="'plus_one'"):
        hos_keras.channel_groups(model)


def test_depthwise_chain_and_multiplier():
    def build(x):
        x = layers.Conv2D(8, 1, name="expand")(x)
        x = layers.BatchNormalization(name="expand_bn")(x)
        x = layers.ReLU(6.0)(x)
        x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
        x = layers.BatchNormalization(name="dw_bn")(x)
        return _head(layers.SeparableConv2D(5, 3, name="sep")(x))

    groups, graph = _analyse(build)
    assert groups["expand"].members == ("expand", "expand_bn", "dw", "dw_bn", "sep")
    np.testing.assert_array_equal(
        graph.inputs["dw_bn"], np.repeat(graph.outputs["expand"], 2)
    )


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

    groups, _ = _analyse(build)
    # Grouped conv (2 groups): channel j of each group is tied, both sides.
    assert groups["before_group"].channels == 4
    assert (
        groups["before_group"].prunable and "grouped" in groups["before_group"].members
    )
    assert groups["grouped"].channels == 4
    # A layer called twice ties its input channels across the calls.
    assert groups["before_shared"].producers == ("before_shared", "shared")
    assert groups["before_shared"].prunable
    # Nested models are traced through; their layers are named "outer/inner".
    assert groups["before_nested"].members == ("before_nested", "sub/inner")
    assert groups["before_nested"].prunable
    assert groups["cf1"].members == ("cf1", "cf_bn", "cf2")
    assert groups["cf2"].members == ("cf2", "cf_head")


def test_channels_first_dense_on_spatial_axis_is_frozen():
    def build(x):
        f = layers.Permute((3, 1, 2))(x)
        f = layers.Conv2D(5, 3, data_format="channels_first", name="cf")(f)
        return layers.Dense(2, name="on_width")(f)

    groups, _ = _analyse(build)
    assert "another axis" in groups["cf"].frozen


def test_reference_networks_prune_what_the_paper_prunes_and_more():
    """docs/method.md#prunable-channels, found automatically, not hand-picked."""
    resnet = hos_keras.models.resnet56()
    groups = {g.name: g for g in hos_keras.channel_groups(resnet).prunable}
    singles = [f"stage{s}_block{b}_conv1" for s in (1, 2, 3) for b in range(1, 10)]
    for name in singles:
        assert groups[name].members == (
            name,
            name.replace("conv1", "bn1"),
            name.replace("conv1", "conv2"),
        )
    # The residual stream of each stage is one group (stem or shortcut + conv2s).
    stage1 = groups["stem_conv"]
    assert stage1.producers == ("stem_conv",) + tuple(
        f"stage1_block{b}_conv2" for b in range(1, 10)
    )
    assert groups["stage3_block1_conv2"].channels == 64
    assert len(groups) == 27 + 3

    v2 = hos_keras.models.cifar_mobilenet_v2(input_shape=(16, 16, 3), alpha=0.5)
    names = {g.name for g in hos_keras.channel_groups(v2).prunable}
    assert {f"block{i}_expand" for i in range(2, 18)} <= names

    # The paper's scope (scope="inner"): only the first conv of each block; the
    # residual streams keep their width. scope="all" prunes the streams too.
    for scope, stream_widths in (("inner", [16, 32, 64]), ("all", [8, 16, 32])):
        plan = hos_keras.plan_pruning(
            resnet, allocation="fixed", ratio=0.5, scope=scope
        )
        streams = ["stem_conv", "stage2_block1_conv2", "stage3_block1_conv2"]
        assert [len(plan[name].keep) for name in streams] == stream_widths
        assert all(
            len(plan[name].keep) == resnet.get_layer(name).filters // 2
            for name in singles
        )
    inner = hos_keras.plan_pruning(
        resnet, allocation="shapiro", coefficient=3.7, scope="inner"
    )
    assert sorted(inner.details["excluded"]) == sorted(streams)
    assert all(inner[name].statistic is not None for name in singles)


def test_the_graph_is_traced_once_per_model_and_rule_table(cnn, monkeypatch):
    traced = []
    trace = graph_lib._trace_groups
    monkeypatch.setattr(
        graph_lib, "_trace_groups", lambda model: traced.append(model) or trace(model)
    )
    first = hos_keras.channel_groups(cnn)
    plan = hos_keras.plan_pruning(cnn, "l1", "fixed", ratio=0.5)
    hos_keras.slim_model(cnn, plan)
    hos_keras.mask_model(cnn, plan)
    assert hos_keras.channel_groups(cnn) is first
    assert traced == [cnn]
    # Another model of the same architecture is traced for itself.
    twin = type(cnn).from_config(cnn.get_config())
    hos_keras.channel_groups(twin)
    assert len(traced) == 2
    # A new layer rule can change the groups: the graph is traced again.

    class Scale(keras.layers.Layer):
        pass

    monkeypatch.setitem(
        hos_keras.layer_rules._RULES, Scale, hos_keras.layer_rules.PerChannel()
    )
    assert hos_keras.channel_groups(cnn) is not first
    assert len(traced) == 3
