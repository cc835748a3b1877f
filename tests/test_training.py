"""Data checked against the model before any training, at every entry point."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tiny

import hos_keras
from hos_keras import training
from hos_keras.errors import InvalidArgumentError
from hos_keras.training import check_inputs

RAW = np.zeros((8, 12, 12), np.uint8), np.zeros(8, np.int64)
INTS = np.zeros((8, 12, 12, 1), np.uint8), np.zeros(8, np.int64)
GOOD = np.zeros((8, 12, 12, 1), np.float32), np.zeros(8, np.int64)


@pytest.mark.parametrize(
    "data, message",
    [
        (RAW, r"shape \(8, 12, 12\).*add the channel axis \(x\[\.\.\., None\]\)"),
        (INTS, r"holds uint8.*x.astype\('float32'\) / 255"),
        (np.zeros((8, 10, 10, 1), np.float32), r"expects inputs of shape"),
        (tf.data.Dataset.from_tensor_slices(GOOD), r"batch the dataset"),
        (tf.data.Dataset.from_tensor_slices(INTS).batch(4), r"holds uint8"),
        ((GOOD[0], GOOD[0], GOOD[1]), None),  # sample weights: fine
    ],
)
def test_check_inputs(data, message):
    if message is None:
        check_inputs(
            tiny.chain((8, 8), input_shape=(12, 12, 1), activation=None, name="small"),
            data,
        )
        return
    with pytest.raises(InvalidArgumentError, match=message):
        check_inputs(
            tiny.chain((8, 8), input_shape=(12, 12, 1), activation=None, name="small"),
            data,
            "train_data",
        )


def test_every_entry_point_checks_before_training(monkeypatch):
    model = tiny.chain((8, 8), input_shape=(12, 12, 1), activation=None, name="small")

    def no_training(*args, **kwargs):
        raise AssertionError("trained on unchecked data")

    with pytest.raises(InvalidArgumentError, match="train_data"):
        hos_keras.compress(model, RAW, GOOD, verbose=0)
    with pytest.raises(InvalidArgumentError, match="val_data"):
        hos_keras.compress(model, GOOD, INTS, verbose=0)
    plan = hos_keras.plan_pruning(model, "l1", "fixed", ratio=0.5)
    student = hos_keras.slim_model(model, plan)
    distiller = hos_keras.HOSDistiller(student, model, plan=plan, pivots=[])
    distiller.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    monkeypatch.setattr(keras.Model, "fit", no_training)
    with pytest.raises(InvalidArgumentError, match="'x'|x.astype"):
        distiller.fit(*INTS, verbose=0)
    with pytest.raises(InvalidArgumentError, match="validation_data"):
        distiller.fit(*GOOD, validation_data=RAW, verbose=0)
    monkeypatch.undo()
    callback = hos_keras.HOSPruneCallback(
        [1], criterion="taylor", allocation="fixed", ratio=0.5, data=RAW, verbose=0
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    with pytest.raises(InvalidArgumentError, match="data has shape"):
        model.fit(*GOOD, epochs=1, callbacks=[callback], verbose=0)


def test_compress_on_a_dataset_raises_no_keras_or_tensorflow_notice(caplog):
    import logging
    import warnings

    keras.utils.set_random_seed(0)
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    x = np.random.default_rng(0).normal(size=(64, 16, 16, 3)).astype("float32")
    y = np.arange(64) % 3
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).take(3)
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).take(2)
    with (
        warnings.catch_warnings(record=True) as caught,
        caplog.at_level(logging.WARNING),
    ):
        warnings.simplefilter("always")
        hos_keras.compress(
            model,
            train,
            val,
            target=0.4,
            distill_epochs=1,
            finetune_epochs=1,
            latency_batch_sizes=(),
            tflite_latency=False,
            verbose=0,
        )
    messages = [str(w.message) for w in caught] + [
        r.getMessage() for r in caplog.records
    ]
    assert not [m for m in messages if "shuffle" in m or "retracing" in m], messages


class _Stages(keras.callbacks.Callback):
    """Records, at the start of every epoch, what the distiller trains with."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        self.epochs.append(
            {
                "epoch": epoch,
                "auxiliary": self.model.auxiliary,
                "lr": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                "steps_before": int(keras.ops.convert_to_numpy(optimizer.iterations)),
                "optimizer": id(optimizer),
            }
        )


def _distiller():
    keras.utils.set_random_seed(0)
    teacher = tiny.chain((8, 8), input_shape=(12, 12, 1), activation=None, name="small")
    plan = hos_keras.plan_pruning(teacher, "l1", "fixed", ratio=0.5)
    return hos_keras.HOSDistiller(
        hos_keras.slim_model(teacher, plan),
        teacher,
        plan=plan,
        pivots=[],
    )


def test_distill_then_finetune_runs_both_stages_with_fresh_optimizers():
    distiller = _distiller()
    stages, after = _Stages(), []
    given = keras.optimizers.SGD(0.02)
    x = np.random.default_rng(0).normal(size=(16, 12, 12, 1)).astype("float32")
    history = hos_keras.training.distill_then_finetune(
        distiller,
        (x, np.arange(16) % 3),
        distill_epochs=2,
        finetune_epochs=2,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distill_optimizer=given,
        finetune_lr_schedule=lambda epoch: [0.5, 0.25][epoch],
        batch_size=8,
        callbacks=[stages],
        after_stage=after.append,
    )
    seen = stages.epochs
    assert [e["epoch"] for e in seen] == [0, 1, 2, 3]
    assert [e["auxiliary"] for e in seen] == [True, True, False, False]
    # The distillation's optimizer is a copy of the one given, the
    # fine-tuning's a new one: each starts at step 0.
    assert seen[0]["optimizer"] != id(given) and seen[0]["lr"] == pytest.approx(0.02)
    assert [e["steps_before"] for e in seen] == [0, 2, 0, 2]
    assert seen[2]["optimizer"] != seen[0]["optimizer"]
    # The schedule counts epochs from the stage's first.
    assert [e["lr"] for e in seen[2:]] == pytest.approx([0.5, 0.25])
    assert after == ["distill", "finetune"]
    assert set(history) == {"distill", "finetune"}
    assert len(history["distill"]["loss"]) == 2
    assert "output_mse" in history["distill"]
    assert "output_mse" not in history["finetune"]


def test_distill_then_finetune_resumes_and_keeps_a_compiled_optimizer():
    distiller = _distiller()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    own = hos_keras.training.sgd(0.03)
    distiller.compile(optimizer=own, loss=loss)
    stages, after = _Stages(), []
    x = np.zeros((8, 12, 12, 1), "float32")
    history = hos_keras.training.distill_then_finetune(
        distiller,
        (x, np.zeros(8, "int32")),
        distill_epochs=2,
        finetune_epochs=1,
        loss=loss,
        distill_optimizer=own,
        batch_size=8,
        initial_epoch=1,
        callbacks=[stages],
        after_stage=after.append,
    )
    # Epoch 0 is done: epoch 1 distills with the compiled optimizer, then the
    # fine-tuning gets the default SGD at 1e-4.
    assert [(e["epoch"], e["auxiliary"]) for e in stages.epochs] == [
        (1, True),
        (2, False),
    ]
    assert stages.epochs[0]["optimizer"] == id(own)
    assert stages.epochs[1]["lr"] == pytest.approx(1e-4)
    assert after == ["distill", "finetune"]
    assert len(history["distill"]["loss"]) == 1


def test_sgd_defaults():
    plain = hos_keras.training.sgd(0.1)
    assert plain.momentum == pytest.approx(0.9) and plain.nesterov
    decayed = hos_keras.training.sgd(0.1, steps=10, weight_decay=5e-4)
    schedule = keras.optimizers.schedules.deserialize(
        decayed.get_config()["learning_rate"]
    )
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule(5)) == pytest.approx(0.05)  # cosine's midpoint
    assert decayed.weight_decay == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.arange(8) % 12, r"labels from 0 to 7 but model 'cnn' outputs 5 classes"),
        (-(np.arange(8) % 2), r"labels from -1 to 0"),
        (np.eye(5)[np.arange(8) % 5], r"one-hot labels of shape \(8, 5\).*argmax"),
        (np.arange(6) % 5, r"8 example\(s\) but 6 label\(s\)"),
        (np.full(8, 1.5), r"non-integer labels"),
    ],
)
def test_label_mistakes_get_an_error_that_names_the_fix(labels, message):
    """Labels a sparse loss cannot take are refused before training, by compress
    (train and validation data, arrays and datasets) and by the distiller."""
    model = tiny.chain([4], input_shape=(6, 6, 3), classes=5, name="cnn")
    x, y = tiny.images(8, (6, 6, 3), classes=5)
    cases = [((x, labels), (x, y), "train_data"), ((x, y), (x, labels), "val_data")]
    if len(labels) == len(x):  # from_tensor_slices itself refuses unequal lengths
        dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
        cases.append(((x, y), dataset, "val_data"))
    for train, val, name in cases:
        if (
            name == "val_data"
            and isinstance(val, tf.data.Dataset)
            and "label(s)" in message
        ):
            continue  # from_tensor_slices itself refuses unequal lengths
        with pytest.raises(InvalidArgumentError, match=f"{name}.*{message}|{message}"):
            hos_keras.compress(
                model, train, val, allocation="fixed", ratio=0.5, verbose=0
            )
    teacher = tiny.chain([4], input_shape=(6, 6, 3), classes=5, name="cnn")
    plan = hos_keras.plan_pruning(teacher, allocation="fixed", ratio=0.5)
    distiller = hos_keras.HOSDistiller(
        hos_keras.slim_model(teacher, plan), teacher, plan=plan, pivots=[]
    )
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    with pytest.raises(InvalidArgumentError, match=message):
        distiller.fit(x, labels, epochs=1, verbose=0)


def test_one_hot_labels_pass_with_a_categorical_loss():
    model = tiny.chain([4], input_shape=(6, 6, 3), classes=5)
    x, y = tiny.images(8, (6, 6, 3), classes=5)
    training.check_labels(
        model, (x, np.eye(5)[y]), keras.losses.CategoricalCrossentropy(), "data"
    )
    training.check_labels(model, (x, y), "sparse_categorical_crossentropy", "data")
