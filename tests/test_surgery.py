"""slim_model against mask_model on real architectures; costs against profile."""

import keras
import numpy as np
import pytest
from invariants import (
    assert_equivalent,
    check_invariant,
    check_reload,
    different_plan,
    live_batchnorm,
    outputs,
    random_inputs,
)
from keras import layers

import hos_keras
from hos_keras.errors import PlanMismatchError

CIFAR = [
    (
        "resnet20",
        lambda: hos_keras.models.resnet20(input_shape=(16, 16, 3)),
        (16, 16, 3),
    ),
    (
        "resnet56",
        lambda: hos_keras.models.resnet56(input_shape=(16, 16, 3)),
        (16, 16, 3),
    ),
    (
        "resnet110",
        lambda: hos_keras.models.resnet110(input_shape=(16, 16, 3)),
        (16, 16, 3),
    ),
    (
        "mobilenet",
        lambda: hos_keras.models.cifar_mobilenet(input_shape=(16, 16, 3), alpha=0.25),
        (16, 16, 3),
    ),
    (
        "mobilenet_v2",
        lambda: hos_keras.models.cifar_mobilenet_v2(
            input_shape=(16, 16, 3), alpha=0.35
        ),
        (16, 16, 3),
    ),
]


@pytest.mark.parametrize("name, build, shape", CIFAR, ids=[c[0] for c in CIFAR])
@pytest.mark.parametrize(
    "options",
    [
        {"criterion": "k34", "allocation": "fixed", "ratio": 0.5},
        {"criterion": "abs_k34", "allocation": "shapiro", "coefficient": 2.5},
        {"criterion": "random", "allocation": "global", "fraction": 0.4, "seed": 3},
    ],
)
def test_slim_equals_masked_on_cifar_networks(name, build, shape, options):
    keras.utils.set_random_seed(0)
    model = live_batchnorm(build())
    plan = hos_keras.plan_pruning(model, **options)
    check_invariant(model, plan)


def test_depthwise_multiplier_separable_transpose_and_dense_chain():
    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(6, 3, padding="same", name="c")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("sigmoid")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = layers.SeparableConv2D(8, 3, depth_multiplier=2, name="sep")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = layers.Conv2DTranspose(5, 3, strides=2, name="up")(x)
    x = layers.Conv2D(4, 1, name="after_up")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(7, activation="tanh", name="fc")(x)
    outputs = layers.Dense(3, name="out")(x)
    model = live_batchnorm(keras.Model(inputs, outputs))
    plan = hos_keras.plan_pruning(model, criterion="l2", allocation="fixed", ratio=0.5)
    assert set(plan.groups) == {"c", "sep", "up", "after_up", "fc"}
    slim = check_invariant(model, plan)
    assert slim.get_layer("dw").get_weights()[0].shape == (3, 3, 3, 2)
    # sep sees 3 kept x 2 (dw) = 6 channels, times its own multiplier 2.
    assert slim.get_layer("sep").get_weights()[1].shape == (1, 1, 12, 4)


def test_sequential_stays_sequential():
    model = keras.Sequential(
        [
            keras.Input((10,)),
            layers.Dense(12, activation="relu", name="h"),
            layers.Dense(2, name="o"),
        ]
    )
    plan = hos_keras.plan_pruning(model, criterion="l1", allocation="fixed", ratio=0.25)
    slim = check_invariant(model, plan)
    assert isinstance(slim, keras.Sequential)
    assert slim.get_layer("h").units == 9


def test_slim_model_saves_and_loads_without_custom_objects(tmp_path):
    model = live_batchnorm(hos_keras.models.resnet20(input_shape=(16, 16, 3)))
    plan = hos_keras.plan_pruning(model, allocation="fixed", ratio=0.5)
    slim = hos_keras.slim_model(model, plan)
    path = tmp_path / "slim.keras"
    check_reload(slim, model, plan, path)
    big = tmp_path / "big.keras"
    model.save(big)
    assert path.stat().st_size < big.stat().st_size


def test_plan_for_another_model_is_rejected():
    a = hos_keras.models.resnet20(input_shape=(16, 16, 3))
    b = hos_keras.models.resnet20(input_shape=(16, 16, 3), width=8)
    plan = hos_keras.plan_pruning(a, allocation="fixed", ratio=0.5)
    with pytest.raises(PlanMismatchError, match="expects 16"):
        hos_keras.slim_model(b, plan)
    other = keras.Sequential([keras.Input((3,)), layers.Dense(2, name="x")])
    with pytest.raises(PlanMismatchError, match="does not have"):
        hos_keras.mask_model(other, plan)
    with pytest.raises(PlanMismatchError, match="PruningPlan"):
        hos_keras.slim_model(a, {"layers": []})


def _coupled_model():
    shared = layers.Conv2D(6, 1, name="shared")
    inputs = keras.Input((10, 10, 3))
    stem = layers.Conv2D(6, 3, padding="same", name="stem")(inputs)
    stem = layers.BatchNormalization(name="stem_bn")(stem)
    branch = layers.Conv2D(6, 3, padding="same", name="branch")(stem)
    x = layers.Add(name="add")([stem, branch])  # residual: stem and branch tied
    x = shared(layers.ReLU()(x))
    x = shared(x)  # shared layer: its input and output channels tied
    s = layers.GlobalAveragePooling2D()(x)
    s = layers.Reshape((1, 1, 6), name="se_reshape")(s)
    s = layers.Conv2D(3, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(6, 1, activation="sigmoid", name="se_expand")(s)
    x = layers.Multiply(name="excite")([x, s])
    other = layers.Conv2D(5, 3, padding="same", name="other")(inputs)
    x = layers.Concatenate(name="cat")([x, other])  # offsets 0..5, 6..10
    x = layers.Conv2D(4, 3, strides=2, name="mix")(x)
    x = layers.Flatten()(x)  # 4x4x4: each channel -> 16 strided rows
    x = layers.Dense(8, activation="relu", name="fc")(x)
    outputs = layers.Dense(3, name="out")(x)
    return live_batchnorm(keras.Model(inputs, outputs))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coupled_groups_slim_equals_masked(seed):
    model = _coupled_model()
    graph = hos_keras.channel_groups(model)
    names = {g.name for g in graph.prunable}
    assert {"other", "mix", "fc", "se_reduce"} <= names
    (residual,) = [g for g in graph.prunable if "branch" in g.producers]
    assert set(residual.producers) == {"stem", "branch", "shared", "se_expand"}
    plan = hos_keras.plan_pruning(
        model, criterion="random", allocation="fixed", ratio=0.5, seed=seed
    )
    slim = check_invariant(model, plan, seed=seed)
    assert slim.get_layer("se_reshape").target_shape == (1, 1, 3)
    # mix keeps 2 of 4 channels (16 rows each); fc itself keeps 4 of 8 units.
    assert slim.get_layer("fc").get_weights()[0].shape == (16 * 2, 4)


def test_group_scores_combine_producer_scores():
    model = _coupled_model()
    plan = hos_keras.plan_pruning(model, criterion="l1", allocation="fixed", ratio=0.5)
    (entry,) = [g for g in plan.groups.values() if "branch" in g.producers]
    l1 = hos_keras.score_filters(model, criterion="l1")
    expected = np.mean([l1[p] for p in entry.producers], axis=0)
    np.testing.assert_allclose(entry.scores, expected, rtol=1e-12)
    with pytest.raises(hos_keras.errors.InvalidArgumentError, match="group_reduction"):
        hos_keras.plan_pruning(model, allocation="fixed", group_reduction="median")


def test_channels_first_model():
    inputs = keras.Input((3, 10, 10))
    x = layers.Conv2D(6, 3, data_format="channels_first", name="a")(inputs)
    x = layers.BatchNormalization(axis=1, name="a_bn")(x)
    y = layers.Conv2D(6, 1, data_format="channels_first", name="b")(x)
    x = layers.Add()([x, y])
    x = layers.MaxPooling2D(data_format="channels_first")(x)
    x = layers.Conv2D(4, 3, data_format="channels_first", name="c")(x)
    x = layers.GlobalAveragePooling2D(data_format="channels_first")(x)
    outputs = layers.Dense(2, name="out")(x)
    model = live_batchnorm(keras.Model(inputs, outputs))
    plan = hos_keras.plan_pruning(model, criterion="l1", allocation="fixed", ratio=0.5)
    assert {"a", "c"} <= set(plan.groups)
    check_invariant(model, plan)


def test_mixed_float16_model():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = hos_keras.models.resnet20(input_shape=(16, 16, 3))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    live_batchnorm(model)
    plan = hos_keras.plan_pruning(model, allocation="fixed", ratio=0.5)
    slim = hos_keras.slim_model(model, plan)
    masked = hos_keras.mask_model(model, plan)
    assert slim.get_layer("stem_conv").dtype_policy.name == "mixed_float16"
    x = random_inputs(model)
    # float16 rounds: 1e-3 relative (the two differ by about 3e-4 of the largest
    # output), against a decoy about 0.3 of it away.
    assert_equivalent(
        outputs(masked, x),
        outputs(slim, x),
        decoys=[outputs(hos_keras.mask_model(model, different_plan(plan)), x)],
        name="mixed_float16 resnet20",
        rtol=1e-3,
    )
    assert hos_keras.profile(slim)["macs"] == plan.macs_after


@pytest.mark.slow
def test_savedmodel_export_and_tflite_are_smaller(tmp_path):
    import tensorflow as tf

    model = live_batchnorm(hos_keras.models.resnet20(input_shape=(16, 16, 3)))
    plan = hos_keras.plan_pruning(model, allocation="target", macs_reduction=0.5)
    slim = hos_keras.slim_model(model, plan)
    x = random_inputs(model)
    decoys = [outputs(hos_keras.mask_model(model, different_plan(plan)), x)]

    def tree_size(path):
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    sizes = {}
    for name, net in (("big", model), ("slim", slim)):
        export_dir = tmp_path / f"{name}_savedmodel"
        net.export(str(export_dir))
        sizes[name] = tree_size(export_dir)
        if name == "slim":
            reloaded = tf.saved_model.load(str(export_dir))
            assert_equivalent(
                outputs(slim, x),
                reloaded.serve(x),
                decoys=decoys,
                name="the slim SavedModel",
                rtol=1e-5,
            )
    assert sizes["slim"] < sizes["big"]
    flat = {}
    for name, net in (("big", model), ("slim", slim)):
        converter = tf.lite.TFLiteConverter.from_keras_model(net)
        flat[name] = converter.convert()
    assert len(flat["slim"]) < 0.75 * len(flat["big"])
    interpreter = tf.lite.Interpreter(model_content=flat["slim"])
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    got = []
    for image in x:  # the converted model takes batches of one
        interpreter.set_tensor(detail["index"], image[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    assert_equivalent(
        outputs(slim, x),
        np.concatenate(got),
        decoys=decoys,
        name="the slim TFLite model",
    )


def test_nested_model_transfer_learning_head():
    keras.utils.set_random_seed(0)
    base_in = keras.Input((12, 12, 3))
    b = layers.Conv2D(8, 3, padding="same", name="conv_a")(base_in)
    b = layers.BatchNormalization(name="bn_a")(b)
    b = layers.ReLU()(b)
    r = layers.Conv2D(8, 3, padding="same", name="conv_b")(b)
    b = layers.Add()([b, r])
    b = layers.Conv2D(6, 3, name="conv_c")(b)
    base = live_batchnorm(keras.Model(base_in, b, name="base"))
    inputs = keras.Input((12, 12, 3))
    x = base(inputs)
    x = layers.Conv2D(5, 1, name="adapter")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs)
    graph = hos_keras.channel_groups(model)
    names = {g.name for g in graph.prunable}
    assert {"base/conv_a", "base/conv_c", "adapter"} <= names
    assert "adapter" in graph.group("base/conv_c").members
    plan = hos_keras.plan_pruning(model, criterion="l1", allocation="fixed", ratio=0.5)
    slim = check_invariant(model, plan)
    assert slim.get_layer("base").get_layer("conv_c").filters == 3


def test_grouped_convolution():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(12, 3, padding="same", name="before")(inputs)
    x = layers.BatchNormalization(name="before_bn")(x)
    x = layers.Conv2D(8, 3, padding="same", groups=4, name="grouped")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(6, 3, padding="same", groups=2, name="grouped2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, name="out")(x)
    model = live_batchnorm(keras.Model(inputs, outputs))
    graph = hos_keras.channel_groups(model)
    assert graph.group("before").channels == 3  # 12 inputs in 4 groups of 3
    plan = hos_keras.plan_pruning(
        model, criterion="random", allocation="fixed", ratio=0.5, seed=0
    )
    slim = check_invariant(model, plan)
    grouped = slim.get_layer("grouped")
    assert grouped.groups == 4 and grouped.filters % 4 == 0
    assert slim.get_layer("before").filters % 4 == 0


def test_flatten_channels_first_and_traced_subclassed_nested_model():
    @keras.saving.register_keras_serializable(package="hos_keras_tests")
    class Scale(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d = layers.Dense(4, name="d")

        def call(self, x):
            return self.d(x)

    inputs = keras.Input((3, 6, 6))
    x = layers.Conv2D(4, 3, data_format="channels_first", name="cf")(inputs)
    x = layers.Flatten(data_format="channels_first")(x)
    x = layers.Dense(5, name="fc")(x)
    y = layers.Dense(4, name="to_sub")(x)
    y = Scale(name="sub")(y)
    outputs = layers.Concatenate()([layers.Dense(2, name="o1")(x), y])
    model = keras.Model(inputs, outputs)
    graph = hos_keras.channel_groups(model)
    # The subclassed model's call is traced: its Dense reads the pruned channels.
    assert graph.group("to_sub").members == ("to_sub", "sub/d")
    assert graph.group("cf").prunable and "fc" in graph.group("cf").members
    plan = hos_keras.plan_pruning(model, criterion="l1", allocation="fixed", ratio=0.5)
    slim = check_invariant(model, plan)
    # It comes back as a plain functional model of its layers.
    inner = slim.get_layer("sub")
    assert type(inner) is keras.Model or type(inner).__name__ == "Functional"
    assert inner.get_layer("d").kernel.shape == (2, 4)
