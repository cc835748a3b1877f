"""Data checked against the model before any training, at every entry point."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import hos_keras
from hos_keras.errors import InvalidArgumentError
from hos_keras.training import check_inputs


def _model():
    inputs = keras.Input((12, 12, 1))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, name="out")(x), name="small")


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
        check_inputs(_model(), data)
        return
    with pytest.raises(InvalidArgumentError, match=message):
        check_inputs(_model(), data, "train_data")


def test_every_entry_point_checks_before_training(monkeypatch):
    model = _model()

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
