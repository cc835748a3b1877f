"""HOSPruneCallback inside model.fit: masks stay zero, slim equals masked."""

import json

import keras
import numpy as np
import pytest
from keras import layers

import hos_keras
from hos_keras.errors import InvalidArgumentError


def _cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    y = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = layers.Add()([x, y])
    x = layers.Conv2D(6, 3, name="c3")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(3, name="out")(x)
    return keras.Model(inputs, outputs)


def _data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamw"])
def test_fit_with_progressive_pruning(tmp_path, optimizer):
    model = _cnn()
    opt = (
        keras.optimizers.SGD(0.05, momentum=0.9)
        if optimizer == "sgd_momentum"
        else keras.optimizers.AdamW(0.01, weight_decay=0.1)
    )
    model.compile(
        optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    plan_path = tmp_path / "plan.json"
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[1, 2],
        criterion="l1",
        allocation="fixed",
        ratio=[0.25, 0.5],
        plan_path=str(plan_path),
        verbose=0,
    )
    x, y = _data()
    history = model.fit(x, y, batch_size=8, epochs=3, callbacks=[callback], verbose=0)
    plan = callback.plan
    assert plan is not None
    assert hos_keras.PruningPlan.from_json(plan_path.read_text()) == plan
    assert "pruned_macs_reduction" in history.history
    # Masked slices are exactly zero after a further epoch of training.
    masks = hos_keras.weight_masks(model, plan)
    assert masks
    for name, layer_masks in masks.items():
        for weight, mask in zip(
            model.get_layer(name).get_weights(), layer_masks, strict=True
        ):
            assert np.all(np.asarray(weight)[~mask] == 0), name
    # The slim model computes what the masked model computes.
    slim = callback.slim_model()
    reference = hos_keras.mask_model(model, plan)
    xs = x[:4]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(slim(xs, training=False)),
        keras.ops.convert_to_numpy(reference(xs, training=False)),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(slim(xs, training=False)),
        keras.ops.convert_to_numpy(model(xs, training=False)),
        rtol=1e-4,
        atol=1e-5,
    )
    assert slim.count_params() < model.count_params()
    assert json.loads(plan_path.read_text())["allocation"] == "fixed"


def test_bad_arguments(tmp_path):
    for bad in ([], [2, 1], [0], [1, 1], "3"):
        with pytest.raises(InvalidArgumentError, match="prune_epochs"):
            hos_keras.HOSPruneCallback(prune_epochs=bad)
    with pytest.raises(InvalidArgumentError, match="one value per epoch"):
        hos_keras.HOSPruneCallback(prune_epochs=[1, 2], allocation="fixed", ratio=[0.5])
    with pytest.raises(InvalidArgumentError, match="not a writable directory"):
        hos_keras.HOSPruneCallback(
            prune_epochs=[1], plan_path=str(tmp_path / "missing" / "p.json")
        )
    model = _cnn()
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callback = hos_keras.HOSPruneCallback(prune_epochs=[5], verbose=0)
    x, y = _data(8)
    with pytest.raises(InvalidArgumentError, match="beyond the 2 epochs"):
        model.fit(x, y, epochs=2, callbacks=[callback], verbose=0)
    with pytest.raises(InvalidArgumentError, match="No pruning step"):
        callback.slim_model()


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def _compiled_cnn():
    model = _cnn()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_resume_with_backup_and_restore_gives_the_same_plan_and_masks(tmp_path):
    x, y = _data()

    def prune(path):
        return hos_keras.HOSPruneCallback(
            prune_epochs=[1, 3],
            criterion="l1",
            allocation="fixed",
            ratio=[0.25, 0.5],
            plan_path=str(path),
            verbose=0,
        )

    reference = _compiled_cnn()
    straight = prune(tmp_path / "straight.json")
    reference.fit(
        x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[straight]
    )

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = _compiled_cnn()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(
            x,
            y,
            batch_size=8,
            epochs=4,
            shuffle=False,
            verbose=0,
            callbacks=[prune(tmp_path / "resumed.json"), backup, _Interrupt()],
        )
    assert (tmp_path / "resumed.json").exists()  # written at the end of epoch 1
    resumed_model = _compiled_cnn()
    resumed = prune(tmp_path / "resumed.json")
    history = resumed_model.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[resumed, keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))],
    )
    assert len(history.history["loss"]) == 3  # really resumed after epoch 1
    assert resumed.plan is not None and straight.plan is not None
    for name, group in straight.plan.groups.items():
        np.testing.assert_array_equal(resumed.plan.groups[name].keep, group.keep)
    masks_a = hos_keras.weight_masks(reference, straight.plan)
    masks_b = hos_keras.weight_masks(resumed_model, resumed.plan)
    assert masks_a.keys() == masks_b.keys()
    for name in masks_a:
        for a, b, w in zip(
            masks_a[name],
            masks_b[name],
            resumed_model.get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
            assert np.all(np.asarray(w)[~b] == 0)


def test_tensorboard_summaries(tmp_path):
    import tensorflow as tf

    model = _compiled_cnn()
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[1],
        allocation="shapiro",
        coefficient=1.5,
        log_dir=str(tmp_path / "logs"),
        verbose=0,
    )
    x, y = _data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    tags = set()
    for path in (tmp_path / "logs").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    group = next(iter(callback.plan.groups))
    assert {
        "hos/macs_reduction",
        f"hos/ratio/{group}",
        f"hos/statistic/{group}",
        f"hos/scores/{group}",
    } <= tags


@pytest.mark.slow
def test_masks_are_the_same_on_every_replica(script_report):
    report = script_report("mirrored_prune.py")
    assert report["replicas"] == 2
    assert report["layers"]
    assert any(entry["masked"] > 0 for entry in report["layers"].values())
    for path, entry in report["layers"].items():
        assert entry["copies"] == 2, path
        assert entry["equal"] and entry["masked_zero"], path
