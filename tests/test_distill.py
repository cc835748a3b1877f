"""HOSDistiller: losses against a hand computation, frozen teacher, logs, errors."""

import keras
import numpy as np
import pytest
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


@pytest.fixture()
def pair():
    teacher = _teacher()
    plan = hos_keras.plan_pruning(
        teacher, criterion="l1", allocation="fixed", ratio=0.5
    )
    return teacher, plan, hos_keras.slim_model(teacher, plan)


@pytest.mark.parametrize("output_loss", ["softmax_mse", "logits_mse"])
def test_losses_match_a_hand_computation(pair, output_loss):
    teacher, plan, student = pair
    distiller = hos_keras.HOSDistiller(
        student,
        teacher,
        plan=plan,
        pivots=["r", "r2"],
        output_loss=output_loss,
        output_weight=0.7,
        decay=3.0,
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data()
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)

    def features(model, name):
        return keras.ops.convert_to_numpy(
            keras.Model(model.input, model.get_layer(name).output)(x)
        )

    s_out = keras.ops.convert_to_numpy(student(x))
    t_out = keras.ops.convert_to_numpy(teacher(x))
    task = -np.mean(np.log(_softmax(s_out)[np.arange(len(y)), y]))
    if output_loss == "softmax_mse":
        out_mse = np.mean((_softmax(s_out) - _softmax(t_out)) ** 2)
    else:
        out_mse = np.mean((s_out - t_out) ** 2)
    keep_h = plan["h"].keep
    keep_h2 = plan["h2"].keep
    mse_r = np.mean((features(student, "r") - features(teacher, "r")[:, keep_h]) ** 2)
    mse_r2 = np.mean(
        (features(student, "r2") - features(teacher, "r2")[:, keep_h2]) ** 2
    )
    gammas = [max(0.01, (1 / 2) ** 3), 1.0]
    total = task + 0.7 * out_mse + gammas[0] * mse_r + gammas[1] * mse_r2
    assert logs["task_loss"] == pytest.approx(task, rel=1e-5)
    assert logs["output_mse"] == pytest.approx(out_mse, rel=1e-5)
    assert logs["mse_r"] == pytest.approx(mse_r, rel=1e-5)
    assert logs["mse_r2"] == pytest.approx(mse_r2, rel=1e-5)
    assert logs["loss"] == pytest.approx(total, rel=1e-5)
    assert distiller.gammas == pytest.approx(gammas)


def test_without_pivots_the_loss_is_task_plus_output_term(pair):
    teacher, plan, student = pair
    distiller = hos_keras.HOSDistiller(
        student, teacher, plan=plan, pivots=None, output_weight=2.0
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data()
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    s_out = keras.ops.convert_to_numpy(student(x))
    t_out = keras.ops.convert_to_numpy(teacher(x))
    task = -np.mean(np.log(_softmax(s_out)[np.arange(len(y)), y]))
    out_mse = np.mean((_softmax(s_out) - _softmax(t_out)) ** 2)
    assert logs["task_loss"] == pytest.approx(task, rel=1e-5)
    assert logs["loss"] == pytest.approx(task + 2.0 * out_mse, rel=1e-5)
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_fit_trains_the_student_only_and_logs_every_term(pair):
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
    for key in ("loss", "task_loss", "output_mse", "mse_r", "accuracy"):
        assert key in history.history
        assert all(np.isfinite(history.history[key]))
    assert history.history["output_mse"][0] > 0
    assert history.history["mse_r"][0] > 0
    assert history.history["loss"][0] > history.history["task_loss"][0]
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
    )
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert "output_mse" not in history.history
    assert history.history["loss"] == pytest.approx(history.history["task_loss"])


def test_auto_pivots_follow_the_paper_on_resnet56():
    model = hos_keras.models.resnet56()
    assert hos_keras.auto_pivots(model, 2) == ["stage1_block9_out", "stage2_block9_out"]
    assert hos_keras.pivot_weights([9, 18], 3.0) == pytest.approx([0.125, 1.0])
    assert hos_keras.pivot_weights([1, 18], 3.0) == pytest.approx([0.01, 1.0])


def test_resnet_student_with_auto_pivots_runs_a_step():
    teacher = hos_keras.models.resnet20(input_shape=(8, 8, 3), num_classes=4)
    plan = hos_keras.plan_pruning(teacher, allocation="fixed", ratio=0.5)
    student = hos_keras.slim_model(teacher, plan)
    distiller = hos_keras.HOSDistiller(student, teacher, plan=plan)
    assert distiller.pivots == ["stage1_block3_out", "stage2_block3_out"]
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    logs = distiller.train_on_batch(x, np.array([0, 1, 2, 3]), return_dict=True)
    assert logs["mse_stage1_block3_out"] > 0 and logs["mse_stage2_block3_out"] > 0


def test_bad_arguments(pair):
    teacher, plan, student = pair
    with pytest.raises(InvalidArgumentError, match="output_weight=-1"):
        hos_keras.HOSDistiller(student, teacher, plan=plan, pivots=[], output_weight=-1)
    with pytest.raises(InvalidArgumentError, match="'r3'.*Close names"):
        hos_keras.HOSDistiller(student, teacher, plan=plan, pivots=["r3"])
    with pytest.raises(InvalidArgumentError, match="output_loss"):
        hos_keras.HOSDistiller(student, teacher, plan=plan, pivots=[], output_loss="kl")
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
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        teacher = hos_keras.models.resnet20(input_shape=(8, 8, 3), num_classes=4)
        plan = hos_keras.plan_pruning(teacher, allocation="fixed", ratio=0.5)
        student = hos_keras.slim_model(teacher, plan)
        distiller = hos_keras.HOSDistiller(student, teacher, plan=plan)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [w.copy() for w in student.get_weights()]
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    history = distiller.fit(x, np.arange(8) % 4, batch_size=4, epochs=1, verbose=0)
    assert all(np.isfinite(v[0]) for v in history.history.values())
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(before, student.get_weights(), strict=True)
    )


def test_get_config_round_trip(pair):
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
    clone = hos_keras.HOSDistiller.from_config(config)
    assert clone.get_config() == config
    assert clone.pivots == ["r"] and clone.output_weight == 5.0
    assert clone.student.get_layer("h").units == student.get_layer("h").units
    assert clone.gammas == distiller.gammas


def test_auxiliary_heads_without_a_plan():
    teacher = hos_keras.models.resnet20(input_shape=(8, 8, 3), num_classes=4)
    plan = hos_keras.plan_pruning(teacher, allocation="fixed", ratio=0.5)
    student = hos_keras.slim_model(teacher, plan)
    distiller = hos_keras.HOSDistiller(student, teacher)  # no plan: heads
    assert len(distiller.aux_heads) == 2
    head = distiller.aux_heads[0]
    assert (
        head.output_shape[-1] == teacher.get_layer(distiller.pivots[0]).output.shape[-1]
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [w.copy() for w in head.get_weights()]
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    logs = distiller.train_on_batch(x, np.array([0, 1, 2, 3]), return_dict=True)
    assert logs[f"mse_{distiller.pivots[0]}"] > 0
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(before, head.get_weights(), strict=True)
    )


def test_teacher_flags_are_left_alone_and_later_students_train(pair):
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
