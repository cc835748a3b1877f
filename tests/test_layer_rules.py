"""The table of layer rules: keras.ops nodes, custom layers, traced blocks,
channel-mixing activations, nested inputs and the one warning per plan."""

import warnings

import keras
import numpy as np
import pytest
from invariants import check_invariant, check_reload, live_batchnorm
from keras import layers, ops

import hos_keras
from hos_keras import layer_rules
from hos_keras.errors import ArgumentTypeError


def _plan(model, ratio=0.5, **options):
    return hos_keras.plan_pruning(
        model, criterion="l1", allocation="fixed", ratio=ratio, **options
    )


@keras.saving.register_keras_serializable(package="hos_keras_tests")
class ChannelScale(keras.layers.Layer):
    """Scales each channel by its own weight (the README's custom-layer example)."""

    def build(self, input_shape):
        self.scale = self.add_weight(
            shape=(input_shape[-1],), initializer="ones", name="scale"
        )

    def call(self, x):
        return x * self.scale


def _scale_model():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, name="c1")(inputs)
    x = ChannelScale(name="scale")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(6, 3, name="c2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(4, name="out")(x))
    model.get_layer("scale").scale.assign(np.linspace(0.5, 2.0, 8))
    return model


def test_custom_layer_is_frozen_until_registered_then_pruned_exactly(tmp_path):
    model = _scale_model()
    with pytest.warns(
        UserWarning, match=r"unknown layer type: 'scale' \(ChannelScale\)"
    ):
        before = hos_keras.channel_groups(model)
    assert "c1" in before.frozen
    try:
        hos_keras.register_layer_rule(ChannelScale, layer_rules.PerChannel("scale"))
        graph = hos_keras.channel_groups(model)
        assert graph.group("c1").members == ("c1", "scale", "c2")
        plan = _plan(model)
        slim = check_invariant(model, plan)
        kept = plan.groups["c1"].keep
        np.testing.assert_array_equal(
            slim.get_layer("scale").scale.numpy(),
            np.linspace(0.5, 2.0, 8, dtype="float32")[kept],
        )
        check_reload(slim, model, plan, tmp_path / "slim.keras")
    finally:
        layer_rules._RULES.pop(ChannelScale, None)


def test_register_layer_rule_rejects_bad_arguments():
    with pytest.raises(ArgumentTypeError, match="layer_class=.*class, not an instance"):
        hos_keras.register_layer_rule(layers.ReLU(), layer_rules.PerChannel())
    with pytest.raises(ArgumentTypeError, match="rule='scale'"):
        hos_keras.register_layer_rule(ChannelScale, "scale")


def test_subclass_inherits_a_rule_only_when_call_is_unchanged():
    class MyConv(layers.Conv2D):
        pass

    class OddConv(layers.Conv2D):
        def call(self, x):
            return super().call(x)[..., ::-1]

    assert isinstance(layer_rules.get_rule(MyConv(2, 1)), layer_rules.ConvRule)
    assert layer_rules.get_rule(OddConv(2, 1)) is None


def test_keras_ops_nodes_pass_tie_and_freeze():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(6, 3, padding="same", name="b")(inputs)
    x = ops.relu(a + 1.0) * (1.0 / 6.0)  # unary ops and scalar operands pass
    y = x * b  # two tensors of the same channels: tied
    gate = ops.mean(y, axis=[1, 2], keepdims=True)  # spatial mean passes
    y = y * ops.sigmoid(gate)
    c = layers.Conv2D(5, 1, name="c")(y)
    mixed = ops.mean(c, axis=-1, keepdims=True) + c  # channel mean: frozen
    d = layers.Conv2D(4, 1, name="d")(mixed)
    outputs = layers.Dense(3, name="out")(layers.GlobalAveragePooling2D()(d))
    model = keras.Model(inputs, outputs)
    with pytest.warns(UserWarning) as record:
        graph = hos_keras.channel_groups(model)
    assert len(record) == 1
    assert graph.group("a").producers == ("a", "b")
    assert graph.group("a").members == ("a", "b", "c")
    assert graph.group("d").prunable
    assert graph.group("c").frozen.startswith("reduces over the channel or batch axis")
    assert "(Mean)" in graph.group("c").frozen
    with pytest.warns(UserWarning, match="does not prune 1 channel group"):
        plan = _plan(model)  # the plan warns too, once
    check_invariant(model, plan)


def test_constant_per_channel_operand_freezes():
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 3, name="a")(inputs)
    x = x * np.arange(1, 5, dtype="float32")
    x = layers.Conv2D(2, 1, name="b")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    graph = hos_keras.channel_groups(model, warn=False)
    assert graph.group("a").frozen.startswith(
        "has a constant operand with several values"
    )


@pytest.mark.parametrize("activation", ["softmax", "log_softmax", "sparsemax"])
def test_channel_mixing_activations_freeze(activation):
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(8, 3, name="a")(inputs)
    x = layers.Activation(activation, name="act")(x)
    x = layers.Conv2D(4, 3, name="b", activation=activation)(x)
    x = layers.Conv2D(4, 1, name="c")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    graph = hos_keras.channel_groups(model, warn=False)
    assert f"activation {activation!r}" in graph.group("a").frozen
    assert "'act' (Activation)" in graph.group("a").frozen
    assert f"activation {activation!r} mixes channels" in graph.group("b").frozen


def test_glu_halves_channels_and_freezes():
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(8, 3, name="a")(inputs)
    x = layers.Activation("glu", name="glu")(x)
    x = layers.Conv2D(4, 1, name="b")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    graph = hos_keras.channel_groups(model, warn=False)
    assert "'glu'" in graph.group("a").frozen
    assert graph.group("b").prunable is False  # reaches the model output
    assert [g.name for g in graph.prunable] == []


def test_nested_model_whose_input_channels_are_pruned():
    inner_in = keras.Input((6, 6, 8))
    y = layers.BatchNormalization(name="bn")(inner_in)
    y = layers.Conv2D(5, 3, padding="same", name="inner_conv")(y)
    inner = keras.Model(inner_in, y, name="inner")
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(8, 3, padding="same", name="outer_conv")(inputs)
    x = inner(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(2, name="out")(x))
    live_batchnorm(model)
    graph = hos_keras.channel_groups(model)
    assert graph.group("outer_conv").members == (
        "outer_conv",
        "inner/bn",
        "inner/inner_conv",
    )
    plan = _plan(model)
    slim = check_invariant(model, plan)
    assert slim.get_layer("inner").input.shape[-1] == 4


def test_traced_block_and_untraceable_block():
    class Block(keras.layers.Layer):
        """A residual block written as a subclassed layer."""

        def __init__(self, filters, **kwargs):
            super().__init__(**kwargs)
            self.filters = filters
            self.conv1 = layers.Conv2D(filters * 2, 3, padding="same", name="conv1")
            self.bn = layers.BatchNormalization(name="bn")
            self.conv2 = layers.Conv2D(filters, 3, padding="same", name="conv2")

        def call(self, x, training=None):
            y = ops.relu(self.bn(self.conv1(x), training=training))
            return x + self.conv2(y)

        def get_config(self):
            return {**super().get_config(), "filters": self.filters}

    class Opaque(keras.layers.Layer):
        """Uses a raw TensorFlow op: it cannot be traced symbolically."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = layers.Conv2D(4, 1, name="conv")

        def call(self, x):
            import tensorflow as tf

            return tf.nn.relu(self.conv(x))

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = Block(4, name="block")(x)
    x = Opaque(name="opaque")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(2, name="out")(x))
    live_batchnorm(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        graph = hos_keras.channel_groups(model)
    assert graph.group("block/conv1").members == (
        "block/conv1",
        "block/bn",
        "block/conv2",
    )
    assert graph.group("block/conv1").prunable
    assert "'opaque' (Opaque)" in graph.group("stem").frozen
    assert "cannot be traced" in graph.group("stem").frozen
    assert len(record) == 1 and "'opaque' (Opaque)" in str(record[0].message)
    with pytest.warns(UserWarning, match="'opaque' \\(Opaque\\)"):
        plan = _plan(model)
    slim = check_invariant(model, plan)
    assert slim.get_layer("block").get_layer("conv1").filters == 4


def test_depthwise_written_as_grouped_conv_passes_channels():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="expand")(inputs)
    x = layers.Conv2D(12, 3, groups=6, padding="same", name="dw")(x)
    x = layers.Conv2D(4, 1, name="project")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    graph = hos_keras.channel_groups(model)
    assert graph.group("expand").members == ("expand", "dw", "project")
    assert graph.group("expand").channels == 6
    plan = _plan(model)
    slim = check_invariant(model, plan)
    assert slim.get_layer("dw").groups == 3 and slim.get_layer("dw").filters == 6


def test_split_into_equal_channel_sections_ties_them():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    left, right = ops.split(x, 2, axis=-1)
    y = layers.Conv2D(4, 1, name="b")(left)
    y = layers.Concatenate()([y, right])
    model = keras.Model(inputs, layers.Dense(3, name="out")(y))
    graph = hos_keras.channel_groups(model)
    assert graph.group("a").channels == 4
    plan = _plan(model)
    check_invariant(model, plan)


def test_profile_counts_ops_without_crashing():
    inputs = keras.Input((4, 6))
    x = layers.Dense(5, name="d")(inputs)
    w = keras.Input((5, 7))
    y = ops.matmul(x + 1.0, w)
    model = keras.Model([inputs, w], y)
    cost = hos_keras.profile(model)
    matmul = [v for k, v in cost["layers"].items() if v["type"] == "Matmul"]
    assert matmul[0]["macs"] == 4 * 7 * 5
    assert cost["macs"] == 4 * 6 * 5 + 4 * 7 * 5
    assert cost["params"] == model.count_params()


def test_one_warning_per_plan_grouped_by_reason():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="free")(inputs)
    for k in range(4):
        x = layers.Conv2D(6, 3, padding="same", name=f"c{k}")(x)
        x = layers.LayerNormalization(name=f"ln{k}")(x)
    x = layers.Conv2D(4, 3, name="last")(x)
    x = layers.Softmax(name="sm")(x)
    x = layers.Conv2D(4, 3, name="after")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    with pytest.warns(UserWarning) as record:
        plan = _plan(model)
    assert len(record) == 1
    message = str(record[0].message)
    assert "does not prune 5 channel groups" in message
    assert "normalises over channels: 'ln0' (LayerNormalization), 'ln1'" in message
    assert "softmax normalises over channels: 'sm' (Softmax)" in message
    assert list(plan.groups) == ["free"]
    assert len(plan.frozen) == 6  # and the output group
    assert plan.frozen["c2"] == "normalises over channels: 'ln2' (LayerNormalization)"


def test_traced_block_with_two_tensor_arguments():
    class Gate(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = layers.Conv2D(6, 1, name="conv")

        def call(self, x, gate):
            return self.conv(x) * ops.sigmoid(gate)

    inputs = keras.Input((6, 6, 3))
    a = layers.Conv2D(5, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(6, 3, padding="same", name="b")(inputs)
    x = Gate(name="gate")(a, b)
    x = layers.Conv2D(4, 1, name="c")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    graph = hos_keras.channel_groups(model)
    assert graph.group("a").members == ("a", "gate/conv")
    assert graph.group("b").producers == ("b", "gate/conv")
    plan = _plan(model)
    check_invariant(model, plan)
