"""HOSDistiller: losses against a hand computation, frozen teacher, logs, errors.

The expected losses are computed in numpy from the models' own features (read
through `keras.Model` probes over the same graphs) and the definitions the
distiller documents: the task loss at full weight, `output_weight` times the mean
squared error of the outputs (softmax probabilities or logits), and gamma_k times
the mean squared error at pivot k against the teacher's features at the plan's
kept channels.
"""

import functools

import keras
import numpy as np
import pytest
import tiny
from keras import layers

import hos_keras
from hos_keras.errors import InvalidArgumentError, PlanMismatchError


def _teacher(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    x = layers.Dense(6, name="h")(inputs)
    x = layers.ReLU(name="r")(x)
    x = layers.Dense(4, name="h2")(x)
    x = layers.ReLU(name="r2")(x)
    outputs = layers.Dense(3, name="out")(x)
    return keras.Model(inputs, outputs, name="teacher")


def _data(n=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype("float32"), rng.integers(0, 3, n)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _cross_entropy(logits, labels):
    """Mean sparse categorical cross-entropy of logits, in numpy."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(len(labels)), labels])


def _probe(model, names, x, training):
    """The model's output and the outputs of the named layers or keras.ops
    operations on `x`, as float64 numpy arrays.

    With `training=True` the BatchNormalization layers normalise with the batch
    statistics (and update their moving statistics, which inference-mode outputs
    read: probe in training mode after the inference-mode checks)."""
    by_name = {op.name: op for op in model.operations}
    outputs = [model.outputs[0], *(by_name[name].output for name in names)]
    probe = keras.Model(model.input, outputs)
    return [
        np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)
        # A model with one output returns a tensor, not a list.
        for t in keras.tree.flatten(probe(x, training=training))
    ]


def _hand_terms(student, teacher, x, y, pivots, keeps, output_loss, training):
    """The distiller's unweighted terms, `{log name: value}`, computed in numpy.

    task_loss: the mean cross-entropy of the student's logits. output_mse: the
    mean over samples and classes of the squared difference between the
    student's and the teacher's softmax probabilities ("softmax_mse") or logits
    ("logits_mse"). mse_<pivot>: the mean over every element of the squared
    difference between the student's features and the teacher's channels
    `keeps[k]` (numpy indexing on the last axis). The teacher runs in inference mode, the student in the mode `training` says.
    """
    s_out, *s_feats = _probe(student, pivots, x, training)
    t_out, *t_feats = _probe(teacher, pivots, x, False)
    terms = {"task_loss": _cross_entropy(s_out, y)}
    if output_loss == "softmax_mse":
        s_out, t_out = _softmax(s_out), _softmax(t_out)
    terms["output_mse"] = np.mean((s_out - t_out) ** 2)
    for pivot, keep, s_feat, t_feat in zip(
        pivots, keeps, s_feats, t_feats, strict=True
    ):
        terms[f"mse_{pivot}"] = np.mean((s_feat - t_feat[..., keep]) ** 2)
    return terms


def _assert_logs(logs, expected):
    """`logs` has exactly the keys of `expected`, each value within a relative
    1e-5."""
    assert set(logs) == set(expected)
    for key, value in expected.items():
        assert logs[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def _first_step(history):
    """The logs of a one-step `fit` as `{name: value}`."""
    return {key: values[0] for key, values in history.history.items()}


@pytest.fixture()
def pair():
    """The MLP `_teacher`, half of each hidden layer pruned by L1 norm, and its
    slimmed student: the student's "r" equals the teacher's at the kept units."""
    teacher = _teacher()
    plan = hos_keras.plan_pruning(
        teacher, criterion="l1", allocation="fixed", ratio=0.5
    )
    return teacher, plan, hos_keras.slim_model(teacher, plan)


@pytest.fixture()
def cnn_pair():
    """tiny.cnn as the teacher, its logits scaled up tenfold so that the softmax
    outputs of teacher and student differ visibly; half of every conv's filters
    pruned by L1 norm."""
    teacher = tiny.cnn()
    logits = teacher.get_layer("logits")
    logits.kernel.assign(10.0 * logits.kernel)
    plan = hos_keras.plan_pruning(
        teacher, criterion="l1", allocation="fixed", ratio=0.5
    )
    return teacher, plan, hos_keras.slim_model(teacher, plan)


@pytest.mark.parametrize("task_weight", [1.0, 0.0])
@pytest.mark.parametrize("output_loss", ["softmax_mse", "logits_mse"])
def test_total_and_every_term_match_a_hand_computation(
    cnn_pair, output_loss, task_weight
):
    """Every logged term and the total of `evaluate` (student in inference mode)
    and of a one-step `fit` (student in training mode, values from before the
    update) equal the numpy computation of `_hand_terms` with the weights
    written out: task_weight * task + 3 * output + 0.25 * pivot 1 + 1 * pivot 2.

    The pivots are the two downsampling stages of tiny.cnn ("pool" after c2,
    "c3"), so decay 2 gives gamma = (1/2)**2 and (2/2)**2. Both pivots carry
    an error (c1 lost filters, so even the first stage differs), the errors
    differ, and the kept channels are not the leading ones: dropping or swapping
    the gammas, dropping the output weight or the task loss, averaging the
    terms, comparing logits instead of probabilities (or the reverse), running
    the student in the wrong mode or gathering the wrong teacher channels each
    moves a term or the total far outside the tolerance. The task loss is
    switched off with Keras' `loss_weights=0.0`.
    """
    teacher, plan, student = cnn_pair
    pivots = ["pool", "c3"]
    keeps = [plan["c2"].keep, plan["c3"].keep]
    for keep in keeps:
        assert not np.array_equal(keep, np.arange(len(keep)))
    distiller = hos_keras.HOSDistiller(
        student,
        teacher,
        plan=plan,
        pivots=pivots,
        output_loss=output_loss,
        output_weight=3.0,
        decay=2.0,
    )
    assert distiller.gammas == pytest.approx([0.25, 1.0])
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        loss_weights=task_weight,
    )
    x, y = tiny.images(8, (10, 10, 3), classes=10)

    def expected(training):
        terms = _hand_terms(
            student, teacher, x, y, pivots, keeps, output_loss, training
        )
        terms["task_loss"] *= task_weight
        parts = [
            3.0 * terms["output_mse"],
            0.25 * terms["mse_pool"],
            1.0 * terms["mse_c3"],
        ]
        terms["loss"] = terms["task_loss"] + sum(parts)
        # Power: every weighted term moves the total, the pivot errors differ.
        assert min(parts) > 1e-3 * terms["loss"]
        assert not np.isclose(terms["mse_pool"], terms["mse_c3"], rtol=0.2)
        return terms

    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    _assert_logs(logs, expected(training=False))
    want = expected(training=True)
    history = distiller.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    _assert_logs(_first_step(history), want)


def test_without_pivots_the_loss_is_task_plus_output_term(pair):
    """Without pivots the terms are the task loss and the softmax output MSE,
    total = task + 2 * output, equal to the numpy computation for `evaluate`
    and for a one-step `fit` (the MLP has no BatchNormalization or Dropout, so
    both modes give the same features), and no pivot term is logged."""
    teacher, plan, student = pair
    distiller = hos_keras.HOSDistiller(
        student, teacher, plan=plan, pivots=None, output_weight=2.0
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data()
    want = _hand_terms(student, teacher, x, y, [], [], "softmax_mse", False)
    want["loss"] = want["task_loss"] + 2.0 * want["output_mse"]
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    _assert_logs(logs, want)
    history = distiller.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    _assert_logs(_first_step(history), want)


def test_fit_trains_the_student_only_and_logs_every_term(pair):
    """`fit` logs the total, every term and the compiled metrics, changes the
    student's weights and leaves the teacher's bit for bit; after
    `set_auxiliary(False)` only the task loss is left: `evaluate` logs
    loss = task_loss = the cross-entropy computed in numpy, and the accuracy of
    the student's argmax."""
    teacher, plan, student = pair
    before_teacher = [w.copy() for w in teacher.get_weights()]
    before_student = [w.copy() for w in student.get_weights()]
    distiller = hos_keras.HOSDistiller(
        student, teacher, plan=plan, pivots=["r"], output_weight=5.0
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = _data(64)
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert set(history.history) == {
        "loss",
        "task_loss",
        "output_mse",
        "mse_r",
        "accuracy",
    }
    for a, b in zip(before_teacher, teacher.get_weights(), strict=True):
        assert a.tobytes() == np.asarray(b).tobytes()
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(before_student, student.get_weights(), strict=True)
    )
    assert distiller.student is student

    distiller.set_auxiliary(False)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    logits = _probe(student, [], x, False)[0]
    task = _cross_entropy(logits, y)
    accuracy = np.mean(logits.argmax(axis=1) == y)
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    _assert_logs(logs, {"loss": task, "task_loss": task, "accuracy": accuracy})
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "task_loss", "accuracy"}
    assert history.history["loss"] == pytest.approx(history.history["task_loss"])


@functools.cache
def _cifar_resnet(depth):
    return hos_keras.models.cifar_resnet(depth=depth)


# Block numbers from the reference (chatzikon/DNN-COMPRESSION,
# cifar/step3/net_for_multiloss_ft.py): its hard-coded positions for one and two
# losses (lines 60-70), and cal_pivot for three (lines 115-133): per = B // 4 + 1,
# [per, 2 per, 3 per], i.e. B = 27 -> [7, 14, 21] and B = 54 -> [14, 28, 42].
# ResNet-56 has 9 blocks per stage, ResNet-110 18.
@pytest.mark.parametrize(
    "depth, n, expected",
    [
        (56, 1, ["stage2_block9_out"]),  # 18
        (56, 2, ["stage1_block9_out", "stage2_block9_out"]),  # 9, 18
        (56, 3, ["stage1_block7_out", "stage2_block5_out", "stage3_block3_out"]),
        (110, 1, ["stage1_block18_out"]),  # 18
        (110, 2, ["stage1_block18_out", "stage2_block18_out"]),  # 18, 36
        (110, 3, ["stage1_block14_out", "stage2_block10_out", "stage3_block6_out"]),
    ],
)
def test_auto_pivots_follow_the_reference_on_resnet56_and_resnet110(depth, n, expected):
    """auto_pivots reproduces the block positions of the reference code."""
    assert hos_keras.auto_pivots(_cifar_resnet(depth), n) == expected


def test_auto_pivots_prefer_stage_ends_elsewhere():
    # ResNet-20 (9 blocks, stage ends 3 and 6): cal_pivot gives [5] and [4, 8];
    # the closest stage ends are [6] and [3, 6]; with three losses, [3, 6, 8].
    model = _cifar_resnet(20)
    blocks = hos_keras.distill.block_outputs(model)
    positions = {
        n: [blocks.index(p) + 1 for p in hos_keras.auto_pivots(model, n)]
        for n in (1, 2, 3)
    }
    assert positions == {1: [6], 2: [3, 6], 3: [3, 6, 8]}
    assert hos_keras.pivot_weights([9, 18], 3.0) == pytest.approx([0.125, 1.0])
    assert hos_keras.pivot_weights([1, 18], 3.0) == pytest.approx([0.01, 1.0])


def _chain(seed=0):
    """A VGG-like chain: pooling and a strided conv (with BN and ReLU) downsample."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(6, 3, strides=2, padding="same", name="down2")(x)
    x = layers.BatchNormalization(name="down2_bn")(x)
    x = layers.ReLU(name="down2_relu")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c3")(x)
    x = layers.MaxPooling2D(name="pool3")(x)
    x = layers.Flatten(name="flat")(x)
    return keras.Model(inputs, layers.Dense(3, name="out")(x), name="chain")


def test_auto_pivots_on_a_chain_are_the_downsampling_stages():
    """Without residual merges the candidates are the downsampling stages; a
    training step's terms (student in training mode) equal the numpy computation
    with the teacher gathered at the channels c1 and down2 keep."""
    teacher = _chain()
    assert hos_keras.distill.block_outputs(teacher) == [
        "pool1",
        "down2_relu",
        "pool3",
    ]
    # Three stages: cal_pivot gives [2] for one loss; for two, [2, 2] moves to
    # the two distinct stage ends [1, 2].
    assert hos_keras.auto_pivots(teacher, 1) == ["down2_relu"]
    assert hos_keras.auto_pivots(teacher, 2) == ["pool1", "down2_relu"]
    with pytest.raises(InvalidArgumentError, match="3 downsampling stages.*n_pivots"):
        hos_keras.auto_pivots(teacher, 3)
    # compress and the tuner distil with the output loss alone instead.
    assert hos_keras.auto_pivots(teacher, 3, strict=False) == []
    plan = hos_keras.plan_pruning(
        teacher, criterion="l1", allocation="fixed", ratio=0.5
    )
    student = hos_keras.slim_model(teacher, plan)
    distiller = hos_keras.HOSDistiller(student, teacher, plan=plan)
    assert distiller.pivots == ["pool1", "down2_relu"]
    assert distiller.gammas == pytest.approx([0.125, 1.0])  # stages 1, 2; decay 3
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    y = np.array([0, 1, 2, 0])
    # The teacher's pivot channels are those c1 and down2 keep (down2_bn and
    # the ReLU act on each channel alone).
    keeps = [plan["c1"].keep, plan["down2"].keep]
    want = _hand_terms(
        student, teacher, x, y, distiller.pivots, keeps, "softmax_mse", True
    )
    want["loss"] = (
        want["task_loss"]
        + 5.0 * want["output_mse"]
        + 0.125 * want["mse_pool1"]
        + want["mse_down2_relu"]
    )
    _assert_logs(distiller.train_on_batch(x, y, return_dict=True), want)
    # The first stage keeps a subset of the teacher's filters and nothing before
    # it changed: the gathered teacher channels match exactly.
    assert want["mse_pool1"] == 0.0


@keras.saving.register_keras_serializable(package="test_distill")
class _SubclassedAdd(layers.Add):
    pass


def _ops_resnet(seed=0):
    """Residual merges written as keras.ops.add, `a + b` and an Add subclass."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    branches = []
    for i in range(3):
        y = layers.Conv2D(6, 3, padding="same", activation="relu", name=f"b{i}a")(x)
        branches.append(layers.Conv2D(4, 3, padding="same", name=f"b{i}b")(y))
        if i == 0:
            x = keras.ops.relu(keras.ops.add(x, branches[-1]))
        elif i == 1:
            x = layers.ReLU(name="b1_out")(x + branches[-1])
        else:
            x = _SubclassedAdd(name="b2_add")([x, branches[-1]])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(3, name="out")(x), name="ops_resnet")


def test_residual_merges_written_with_keras_ops_count_as_blocks():
    """keras.ops.add, `a + b` and an Add subclass end blocks like Add layers;
    pivots on a keras.ops operation and on a layer after `a + b` give the
    numpy terms, the teacher gathered at the residual group's kept channels."""
    teacher = _ops_resnet()
    relu = [op for op in teacher.operations if type(op).__name__ == "Relu"]
    assert len(relu) == 1  # keras.ops.relu after keras.ops.add
    assert hos_keras.distill.block_outputs(teacher) == [
        relu[0].name,
        "b1_out",
        "b2_add",
    ]
    plan = hos_keras.plan_pruning(
        teacher, criterion="l1", allocation="fixed", ratio=0.5
    )
    student = hos_keras.slim_model(teacher, plan)
    distiller = hos_keras.HOSDistiller(
        student, teacher, plan=plan, pivots=[relu[0].name, "b1_out"]
    )
    assert distiller.gammas == pytest.approx([max(0.01, 0.5**3), 1.0])
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    y = np.array([0, 1, 2, 0])
    # Both pivots carry the residual group of the stem and b*b convolutions.
    keep = plan["stem"].keep
    want = _hand_terms(
        student, teacher, x, y, distiller.pivots, [keep, keep], "softmax_mse", True
    )
    first, second = (want[f"mse_{p}"] for p in distiller.pivots)
    assert first > 0 and second > 0
    want["loss"] = want["task_loss"] + 5.0 * want["output_mse"] + 0.125 * first + second
    _assert_logs(distiller.train_on_batch(x, y, return_dict=True), want)


@pytest.mark.parametrize("pivots, weight", [(["r"], 5.0), (None, 1.0)])
def test_output_weight_defaults_to_the_reference_mse_factor(pair, pivots, weight):
    """The output weight defaults to the reference's mse_factor: 5 with
    intermediate losses, 1 without. The evaluated total equals the numpy terms
    with that weight; the weight survives a get_config round trip."""
    teacher, plan, student = pair
    distiller = hos_keras.HOSDistiller(
        student, teacher, plan=plan, pivots=pivots, output_loss="logits_mse"
    )
    assert distiller.output_weight == weight
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data()
    pivots = pivots or []
    keeps = [plan["h"].keep] * len(pivots)
    want = _hand_terms(student, teacher, x, y, pivots, keeps, "logits_mse", False)
    # The only pivot is the last one: gamma 1.
    want["loss"] = (
        want["task_loss"]
        + weight * want["output_mse"]
        + sum(want[f"mse_{p}"] for p in pivots)
    )
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    _assert_logs(logs, want)
    config = distiller.get_config()
    assert config["output_weight"] == weight
    clone = hos_keras.HOSDistiller.from_config(config)
    assert clone.output_weight == weight and clone.get_config() == config


def test_resnet_student_with_auto_pivots_runs_a_step():
    """On ResNet-20 the automatic pivots are the two stage ends, and a training
    step's terms (student in training mode) equal the numpy computation with
    the teacher's features gathered at each stage's residual group."""
    teacher = hos_keras.models.resnet20(input_shape=(8, 8, 3), num_classes=4)
    plan = hos_keras.plan_pruning(teacher, allocation="fixed", ratio=0.5)
    student = hos_keras.slim_model(teacher, plan)
    distiller = hos_keras.HOSDistiller(student, teacher, plan=plan)
    assert distiller.pivots == ["stage1_block3_out", "stage2_block3_out"]
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert distiller.gammas == pytest.approx([0.125, 1.0])  # blocks 3, 6; decay 3
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    y = np.array([0, 1, 2, 3])
    # Each pivot carries its stage's residual group.
    keeps = [plan["stem_conv"].keep, plan["stage2_block1_conv2"].keep]
    want = _hand_terms(
        student, teacher, x, y, distiller.pivots, keeps, "softmax_mse", True
    )
    want["loss"] = (
        want["task_loss"]
        + 5.0 * want["output_mse"]
        + 0.125 * want["mse_stage1_block3_out"]
        + want["mse_stage2_block3_out"]
    )
    _assert_logs(distiller.train_on_batch(x, y, return_dict=True), want)


def test_bad_arguments(pair):
    """Each wrong argument raises an error that names it."""
    teacher, plan, student = pair
    with pytest.raises(InvalidArgumentError, match="output_weight=-1"):
        hos_keras.HOSDistiller(student, teacher, plan=plan, pivots=[], output_weight=-1)
    with pytest.raises(InvalidArgumentError, match="'r3'.*Close names"):
        hos_keras.HOSDistiller(student, teacher, plan=plan, pivots=["r3"])
    with pytest.raises(InvalidArgumentError, match="output_weight='auto'.*None"):
        hos_keras.HOSDistiller(student, teacher, pivots=[], output_weight="auto")
    with pytest.raises(InvalidArgumentError, match="output_loss"):
        hos_keras.HOSDistiller(student, teacher, plan=plan, pivots=[], output_loss="kl")
    with pytest.raises(InvalidArgumentError, match="n=-1"):
        hos_keras.auto_pivots(teacher, -1)
    with pytest.raises(InvalidArgumentError, match="0 downsampling stages"):
        hos_keras.HOSDistiller(student, teacher, plan=plan, n_pivots=1)
    assert hos_keras.auto_pivots(teacher, 0) == []
    shared_in = keras.Input((5,))
    shared = layers.Dense(5, name="twice")
    twice = keras.Model(shared_in, layers.Dense(3)(shared(shared(shared_in))))
    with pytest.raises(InvalidArgumentError, match="'twice' is called 2 times"):
        hos_keras.HOSDistiller(twice, teacher, pivots=["twice"])
    other_out = keras.Input((5,))
    wider = keras.Model(other_out, layers.Dense(4)(other_out))
    with pytest.raises(InvalidArgumentError, match="output shape"):
        hos_keras.HOSDistiller(wider, teacher, pivots=[])
    other_in = keras.Input((7,))
    other = keras.Model(other_in, layers.Dense(3)(other_in))
    with pytest.raises(InvalidArgumentError, match="input shape"):
        hos_keras.HOSDistiller(other, teacher, pivots=[])
    wrong = hos_keras.plan_pruning(
        teacher, criterion="l1", allocation="fixed", ratio=0.2
    )
    with pytest.raises(PlanMismatchError, match="pivot 'r'"):
        hos_keras.HOSDistiller(student, teacher, plan=wrong, pivots=["r"])


@pytest.mark.slow
def test_mirrored_strategy_matches_one_device(script_report):
    """Two replicas log the same terms and reach the same weights as one device."""
    report = script_report("mirrored_step.py")
    assert report["replicas"] == 2
    for key in ("loss", "task_loss", "output_mse", "mse_r", "mse_r2"):
        assert report["mirrored"][key] == pytest.approx(
            report["single"][key], rel=1e-5
        ), key
    assert report["max_weight_gap"] < 1e-5


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_two_workers_agree(tmp_path):
    """Two workers of fit_distributed end with identical weights and losses."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "multiworker_fit.py"
    workers = [f"localhost:{p}" for p in _free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / f"w{index}.npz")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        try:
            _, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail("multi-worker fit did not finish in 300 s")
        assert process.returncode == 0, err[-3000:]
    w0 = np.load(tmp_path / "w0.npz")
    w1 = np.load(tmp_path / "w1.npz")
    arrays = [k for k in w0.files if k.startswith("arr_")]
    assert arrays
    for key in arrays:
        np.testing.assert_array_equal(w0[key], w1[key])
    np.testing.assert_allclose(w0["loss"], w1["loss"], rtol=1e-6)
    assert np.all(np.isfinite(w0["loss"])) and w0["loss"][1] < w0["loss"][0]


def test_mixed_float16_training_uses_loss_scaling():
    """Under the mixed_float16 policy the distiller's optimizer is wrapped in a
    LossScaleOptimizer, a training epoch logs finite values (no float16
    overflow) and changes the student's weights."""
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        teacher = tiny.cnn()
        plan = hos_keras.plan_pruning(teacher, allocation="fixed", ratio=0.5)
        student = hos_keras.slim_model(teacher, plan)
        distiller = hos_keras.HOSDistiller(
            student, teacher, plan=plan, pivots=["pool", "c3"]
        )
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [w.copy() for w in student.get_weights()]
    x, y = tiny.images(8, (10, 10, 3), classes=10)
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert set(history.history) == {
        "loss",
        "task_loss",
        "output_mse",
        "mse_pool",
        "mse_c3",
    }
    assert all(np.isfinite(v[0]) for v in history.history.values())
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(before, student.get_weights(), strict=True)
    )


def test_get_config_round_trip(pair):
    """get_config starts from keras.Model's and from_config rebuilds the same
    distiller."""
    teacher, plan, student = pair
    distiller = hos_keras.HOSDistiller(
        student,
        teacher,
        plan=plan,
        pivots=["r"],
        output_loss="logits_mse",
        output_weight=5.0,
        decay=2.0,
    )
    config = distiller.get_config()
    # Keras's own keys come from keras.Model.get_config.
    assert {"name", "trainable", "dtype"} <= set(config)
    clone = hos_keras.HOSDistiller.from_config(config)
    assert clone.get_config() == config
    assert clone.pivots == ["r"] and clone.output_weight == 5.0
    assert clone.student.get_layer("h").units == student.get_layer("h").units
    assert clone.gammas == distiller.gammas


def test_auxiliary_heads_without_a_plan(cnn_pair):
    """Without a plan, each pivot whose widths differ gets a head: the term is
    the mean squared error between Dense(global mean of the student's features)
    and the global mean of the teacher's, computed here in numpy with the
    head's own kernel and bias; evaluate's terms and total match it, and a
    training step updates the heads."""
    teacher, _, student = cnn_pair
    pivots = ["pool", "c3"]
    distiller = hos_keras.HOSDistiller(student, teacher, pivots=pivots)
    assert [head.name for head in distiller.aux_heads] == [
        "aux_head_pool",
        "aux_head_c3",
    ]
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = tiny.images(8, (10, 10, 3), classes=10)
    want = _hand_terms(student, teacher, x, y, [], [], "softmax_mse", False)
    s_feats = _probe(student, pivots, x, False)[1:]
    t_feats = _probe(teacher, pivots, x, False)[1:]
    for pivot, head, s_feat, t_feat in zip(
        pivots, distiller.aux_heads, s_feats, t_feats, strict=True
    ):
        dense = head.layers[-1]
        kernel = keras.ops.convert_to_numpy(dense.kernel)
        assert kernel.shape == (s_feat.shape[-1], t_feat.shape[-1])
        mapped = s_feat.mean(axis=(1, 2)) @ kernel + keras.ops.convert_to_numpy(
            dense.bias
        )
        want[f"mse_{pivot}"] = np.mean((mapped - t_feat.mean(axis=(1, 2))) ** 2)
    want["loss"] = (
        want["task_loss"]
        + 5.0 * want["output_mse"]
        + 0.125 * want["mse_pool"]
        + want["mse_c3"]
    )
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    _assert_logs(logs, want)
    before = [w.copy() for head in distiller.aux_heads for w in head.get_weights()]
    distiller.train_on_batch(x, y)
    after = [w for head in distiller.aux_heads for w in head.get_weights()]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_teacher_flags_are_left_alone_and_later_students_train(pair):
    """The teacher's variables are excluded from training without touching its
    `trainable` flags, so a second student slimmed from it trains fully."""
    teacher, plan, student = pair
    before = [w.copy() for w in teacher.get_weights()]
    distiller = hos_keras.HOSDistiller(student, teacher, plan=plan, pivots=None)
    assert teacher.trainable and all(layer.trainable for layer in teacher.layers)
    teacher_ids = {id(v) for v in teacher.variables}
    assert not any(id(v) in teacher_ids for v in distiller.trainable_variables)
    assert len(distiller.trainable_variables) == len(student.trainable_variables)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data(32)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for old, new in zip(before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    # A second student slimmed from the same teacher is trainable again.
    again = hos_keras.slim_model(teacher, plan)
    second = hos_keras.HOSDistiller(
        again, teacher, plan=plan, pivots=None, auxiliary=False
    )
    second.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = [w.copy() for w in again.get_weights()]
    second.fit(x, y, batch_size=8, epochs=1, verbose=0)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(start, again.get_weights(), strict=True)
    ]
    assert all(changed)


def test_teacher_with_batchnorm_and_dropout_is_frozen_in_inference_mode():
    """The teacher runs in inference mode (moving statistics, no dropout): the
    step's terms equal numpy on its inference outputs, and its weights and
    moving statistics stay bit for bit."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    x = layers.Dense(6, name="h")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="r")(x)
    x = layers.Dropout(0.5, name="drop")(x)
    teacher = keras.Model(inputs, layers.Dense(3, name="out")(x), name="teacher")
    bn = teacher.get_layer("bn")
    rng = np.random.default_rng(2)
    bn.moving_mean.assign(rng.normal(size=6).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=6).astype("float32"))
    # A student without BN or Dropout: its training-mode outputs are its outputs.
    s_inputs = keras.Input((5,))
    s = layers.ReLU(name="r")(layers.Dense(6, name="h")(s_inputs))
    student = keras.Model(s_inputs, layers.Dense(3, name="out")(s), name="student")
    distiller = hos_keras.HOSDistiller(
        student, teacher, pivots=["r"], output_loss="logits_mse"
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data(32)

    def run(model, training):
        features = keras.Model(model.input, [model.output, model.get_layer("r").output])
        return [keras.ops.convert_to_numpy(t) for t in features(x, training=training)]

    s_out, s_r = run(student, False)
    t_out, t_r = run(teacher, False)
    before = [w.copy() for w in teacher.get_weights()]
    moving = [bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()]
    logs = distiller.train_on_batch(x, y, return_dict=True)
    # The terms of the step used teacher(x, training=False) ...
    assert logs["output_mse"] == pytest.approx(np.mean((s_out - t_out) ** 2), rel=1e-5)
    assert logs["mse_r"] == pytest.approx(np.mean((s_r - t_r) ** 2), rel=1e-5)
    # ... which differs from the teacher in training mode (batch statistics and
    # dropout), run here on a copy so the teacher's statistics stay put.
    copy = keras.models.clone_model(teacher)
    copy.set_weights(teacher.get_weights())
    train_out, train_r = run(copy, True)
    assert not np.allclose(train_out, t_out) and not np.allclose(train_r, t_r)

    distiller.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for old, new in zip(before, teacher.get_weights(), strict=True):
        assert old.tobytes() == np.asarray(new).tobytes()
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moving[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), moving[1])
    assert not np.array_equal(s_out, keras.ops.convert_to_numpy(student(x)))


def test_callers_default_to_the_reference_output_weight():
    """compress and the tuner leave the output weight to the reference default."""
    import inspect

    from hos_keras.tuner import HOSHyperModel

    assert (
        inspect.signature(hos_keras.compress).parameters["output_weight"].default
        is None
    )
    low, high = inspect.signature(HOSHyperModel).parameters["output_weight"].default
    assert low <= 1.0 and 5.0 <= high  # both values of the reference's mse_factor


def test_compiling_without_a_task_loss_says_how_to_drop_it(pair):
    """loss=None is refused with the fix (loss_weights=0.0), not a TypeError."""
    teacher, plan, student = pair
    distiller = hos_keras.HOSDistiller(student, teacher, plan=plan, pivots=[])
    distiller.compile(optimizer="sgd", loss=None)
    x, y = tiny.images(4, tuple(teacher.inputs[0].shape[1:]), classes=10)
    with pytest.raises(InvalidArgumentError, match="loss_weights=0.0"):
        distiller.evaluate(x, y, verbose=0)
