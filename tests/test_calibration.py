"""Data-driven criteria: calibration statistics against direct numpy computations."""

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from keras import layers

import hos_keras
from hos_keras import calibration
from hos_keras.errors import InvalidArgumentError


def _model(width=4):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(width, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(5, 3, padding="same", name="c2")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, name="out")(x), name="tiny")


def _data(n=12):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6, 6, 3)).astype("float32")
    return x, (np.arange(n) % 3).astype("int32")


def _maps_and_grads(model, name, x, y):
    """The layer's outputs and d(sum of per-example losses)/d(outputs), by hand."""
    probe = keras.Model(model.input, [model.output, model.get_layer(name).output])
    with tf.GradientTape() as tape:
        out, maps = probe(x, training=False)
        logp = tf.nn.log_softmax(out)
        loss = -tf.reduce_sum(tf.gather(logp, y, batch_dims=1))
    return maps.numpy().astype(np.float64), tape.gradient(loss, maps).numpy()


def test_each_statistic_matches_a_direct_computation():
    model, (x, y) = _model(), _data()
    stats = calibration.collect(model, ["c1", "c2"], (x, y))
    for name in ("c1", "c2"):
        maps, grads = _maps_and_grads(model, name, x, y)
        channels = maps.shape[-1]
        per = maps.reshape(len(x), -1, channels)
        got = stats[name]
        assert got.images == len(x)
        dfs = np.mean(
            [[per[n, :, c].std() for c in range(channels)] for n in range(12)], 0
        )
        np.testing.assert_allclose(got.std_sum / 12, dfs, rtol=1e-6)
        cosine = np.zeros((channels, channels))
        for n in range(12):
            for c in range(channels):
                for d in range(channels):
                    a, b = per[n, :, c], per[n, :, d]
                    cosine[c, d] += a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        np.testing.assert_allclose(got.cosine_sum, cosine, rtol=1e-6)
        products = (per * grads.reshape(per.shape)).sum(axis=1)
        np.testing.assert_allclose(got.taylor_sum, np.abs(products).sum(0), rtol=1e-5)
        np.testing.assert_allclose(got.fisher_sum, (products**2).sum(0), rtol=1e-5)
        values = per.reshape(-1, channels)
        for c in range(channels):
            assert got.power.kstat(3)[c] == pytest.approx(
                scipy.stats.kstat(values[:, c], 3), rel=1e-6, abs=1e-9
            )


def test_batches_add_up_to_one_pass_over_all_the_data():
    model, (x, y) = _model(), _data()
    whole = calibration.collect(model, ["c1"], (x, y))["c1"]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    parts = calibration.collect(model, ["c1"], dataset)["c1"]
    assert parts.images == whole.images == 12
    for field in ("std_sum", "cosine_sum", "taylor_sum", "fisher_sum"):
        np.testing.assert_allclose(
            getattr(parts, field), getattr(whole, field), rtol=1e-6
        )
    np.testing.assert_allclose(parts.power.kstat(4), whole.power.kstat(4), rtol=1e-6)
    two = calibration.collect(model, ["c1"], dataset, steps=2)["c1"]
    assert two.images == 10


@pytest.mark.parametrize(
    "criterion", ["dfs", "sfs", "taylor", "fisher", "activation_k34"]
)
def test_data_criteria_plan_from_their_statistics(criterion):
    model, (x, y) = _model(), _data()
    plan = hos_keras.plan_pruning(
        model, criterion, "fixed", ratio=0.5, data=(x, y), calibration_steps=1
    )
    maps, grads = _maps_and_grads(model, "c1", x, y)
    per = maps.reshape(12, -1, 4)
    products = (per * grads.reshape(per.shape)).sum(axis=1)
    if criterion == "dfs":
        expected = per.std(axis=1).mean(axis=0)
    elif criterion == "sfs":
        unit = per / np.linalg.norm(per, axis=1, keepdims=True)
        similarity = np.einsum("npc,npd->cd", unit, unit) / 12
        np.fill_diagonal(similarity, -np.inf)
        expected = -similarity.max(axis=1)
    elif criterion == "taylor":
        expected = np.abs(products).mean(axis=0)
    elif criterion == "fisher":
        # What one channel of c1 costs: the same network one channel narrower.
        saved = hos_keras.profile(model)["macs"] - hos_keras.profile(_model(3))["macs"]
        assert saved >= 36 * 3 * 3 * 3 + 36 * 3 * 3 * 5  # its filter and c2's row
        expected = (products**2).sum(axis=0) / saved
    else:
        values = per.reshape(-1, 4)
        expected = [
            scipy.stats.kstat(values[:, c], 3) * scipy.stats.kstat(values[:, c], 4)
            for c in range(4)
        ]
    np.testing.assert_allclose(plan["c1"].scores, expected, rtol=1e-5)
    assert plan.criterion == criterion
    kept = np.sort(np.argsort(-np.asarray(expected), kind="stable")[:2])
    np.testing.assert_array_equal(np.sort(plan["c1"].keep), kept)


def test_data_is_required_by_data_criteria_and_refused_by_weight_ones():
    model, data = _model(), _data()
    with pytest.raises(InvalidArgumentError, match="data=None"):
        hos_keras.plan_pruning(model, "taylor", "fixed", ratio=0.5)
    with pytest.raises(InvalidArgumentError, match="read weights only"):
        hos_keras.plan_pruning(model, "l1", "fixed", ratio=0.5, data=data)
    with pytest.raises(InvalidArgumentError, match="no labels"):
        calibration.collect(
            model,
            ["c1"],
            tf.data.Dataset.from_tensor_slices(data[0]).batch(4),
            wanted=("taylor",),
        )
    with pytest.raises(InvalidArgumentError, match="calibration_steps=0"):
        hos_keras.plan_pruning(
            model, "dfs", "fixed", ratio=0.5, data=data, calibration_steps=0
        )


@pytest.mark.slow
def test_replicas_of_a_mirrored_strategy_add_up_to_one_device(script_report):
    report = script_report("mirrored_calibration.py")
    assert report["replicas"] == 2
    assert set(report["criteria"]) == {
        "dfs",
        "sfs",
        "taylor",
        "fisher",
        "activation_k34",
    }
    for groups in report["criteria"].values():
        for scores in groups.values():
            np.testing.assert_allclose(
                scores["mirrored"], scores["alone"], rtol=1e-5, atol=1e-12
            )
