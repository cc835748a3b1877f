"""compress(): the pipeline on tiny data, checked against independent references."""

import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from invariants import assert_same_outputs
from keras import layers

import hos_keras
from hos_keras.compress import STAGES
from hos_keras.errors import InvalidArgumentError, NothingToPruneError, StageError


def _data(n, seed, shape=(16, 16, 3), classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + shape).astype("float32")
    # A learnable label: which third of the image is brightest.
    thirds = np.stack(
        [x[:, :, i * 5 : i * 5 + 5].mean(axis=(1, 2, 3)) for i in range(3)]
    )
    return x, (np.argmax(thirds, axis=0) % classes).astype("int32")


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(keras.ops.convert_to_numpy(model(x)), 1) == y))


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    train, val = _data(96, 0), _data(48, 1)
    # A trained, compiled model: its own .keras file carries Adam's slots.
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(*train, batch_size=32, epochs=1, verbose=0)
    out = tmp_path_factory.mktemp("compress")
    model.save(out / "with_optimizer.keras")
    weights = [w.copy() for w in model.get_weights()]
    slim, report = hos_keras.compress(
        model,
        train,
        val,
        macs_reduction=0.4,
        distill_epochs=1,
        finetune_epochs=1,
        distill_optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        batch_size=32,
        latency_batch_sizes=(1, 4),
        latency_runs=3,
        output_dir=str(out),
        verbose=0,
    )
    return model, weights, train, val, out, slim, report


def test_report_accuracies_match_independent_evaluations(resnet_run):
    model, _, train, (x, y), _, slim, report = resnet_run
    assert report.accuracy("original") == pytest.approx(_accuracy(model, x, y))
    # Right after pruning the slim model computes what the masked model computes.
    masked = hos_keras.mask_model(model, report.plan)
    assert report.accuracy("pruned") == pytest.approx(_accuracy(masked, x, y))
    assert report.accuracy("finetuned") == pytest.approx(_accuracy(slim, x, y))
    stages = {"original", "pruned", "recalibrated", "distilled", "finetuned"}
    assert set(report.metrics) == stages
    # Then its batch norms are re-estimated on the first 8 training batches.
    recalibrated = hos_keras.slim_model(model, report.plan)
    seen = hos_keras.recalibrate_batchnorm(recalibrated, train, 8, batch_size=32)
    assert set(seen.values()) == {min(8 * 32, len(train[0]))}
    assert report.accuracy("recalibrated") == pytest.approx(
        _accuracy(recalibrated, x, y)
    )
    assert all(np.isfinite(v["loss"]) for v in report.metrics.values())


def test_report_costs_and_plan(resnet_run):
    model, _, _, _, _, slim, report = resnet_run
    before, after = hos_keras.profile(model), hos_keras.profile(slim)
    assert report.params == {"original": before["params"], "slim": after["params"]}
    assert report.macs == {"original": before["macs"], "slim": after["macs"]}
    assert 1 - after["macs"] / before["macs"] >= 0.4
    assert report.details["achieved_macs_reduction"] == pytest.approx(
        report.plan.macs_reduction
    )
    assert {layer["name"] for layer in report.layers} == set(report.plan.groups)
    for layer in report.layers:
        group = report.plan[layer["name"]]
        assert layer["kept"] == len(group.keep)
        assert layer["ratio"] == pytest.approx(group.ratio)
    assert report.file_bytes["slim"] < report.file_bytes["original"]
    # Sizes compare the models, not their optimizers.
    with_optimizer = (resnet_run[4] / "with_optimizer.keras").stat().st_size
    assert report.file_bytes["original"] < 0.8 * with_optimizer
    assert set(report.tflite_latency_ms) == {"original", "slim"}
    assert all(v > 0 for v in report.tflite_latency_ms.values())
    for name in ("original", "slim"):
        assert set(report.latency_ms[name]) == {1, 4}
        assert all(v > 0 for v in report.latency_ms[name].values())


def test_distillation_used_pivots_and_finetuning_did_not(resnet_run):
    _, _, _, _, _, _, report = resnet_run
    assert report.pivots == hos_keras.auto_pivots(
        hos_keras.slim_model(resnet_run[0], report.plan), 2
    )
    distill = report.history["distill"]
    for pivot in report.pivots:
        assert np.isfinite(distill[f"mse_{pivot}"][0])
        assert distill[f"mse_{pivot}"][0] > 0
    assert distill["output_mse"][0] > 0
    assert not any(k.startswith("mse_") for k in report.history["finetune"])
    assert "output_mse" not in report.history["finetune"]


def test_input_model_is_untouched(resnet_run):
    model, weights, *_ = resnet_run
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert model.trainable
    assert all(layer.trainable for layer in model.layers)


def test_output_dir_holds_a_loadable_model_plan_and_report(resnet_run):
    _, _, _, (x, _), out, slim, report = resnet_run
    loaded = keras.models.load_model(out / "slim.keras")
    assert_same_outputs(slim, loaded, x[:8])
    plan = hos_keras.PruningPlan.from_json((out / "plan.json").read_text())
    assert plan == report.plan
    saved = json.loads((out / "report.json").read_text())
    assert saved["accuracy"]["finetuned"] == pytest.approx(report.accuracy("finetuned"))
    assert saved["macs"] == report.macs


def test_summary_prints_the_before_after_table(resnet_run, capsys):
    report = resnet_run[-1]
    report.summary()
    text = capsys.readouterr().out
    for label in (
        "params",
        "MACs",
        "latency b1",
        "TFLite latency b1",
        ".keras file",
        "after fine-tuning",
    ):
        assert label in text
    assert f"{report.params['original']:,}" in text


def test_softmax_model_with_datasets_and_no_training():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3))
    h = layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    h = layers.Conv2D(8, 3, activation="relu", name="c2")(h)
    h = layers.GlobalAveragePooling2D()(h)
    outputs = layers.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, outputs)
    (x, y), (xv, yv) = _data(32, 2), _data(16, 3)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(8)
    slim, report = hos_keras.compress(
        model,
        train,
        val,
        allocation="fixed",
        ratio=0.5,
        distill_epochs=0,
        finetune_epochs=0,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    assert set(report.metrics) == {"original", "pruned"}
    assert report.history == {} and report.latency_ms == {}
    assert report.tflite_latency_ms == {}
    # Probabilities out: cross-entropy without from_logits, by hand.
    p = keras.ops.convert_to_numpy(model(xv))
    expected = -np.mean(np.log(p[np.arange(len(yv)), yv]))
    assert report.metrics["original"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert [layer["kept"] for layer in report.layers] == [4, 4]
    assert slim.get_layer("c1").filters == 4


def test_model_without_softmax_trains_with_output_loss_only():
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            layers.Conv2D(8, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(3),
        ]
    )
    slim, report = hos_keras.compress(
        model,
        _data(32, 4),
        _data(16, 5),
        allocation="fixed",
        ratio=0.5,
        distill_epochs=1,
        finetune_epochs=0,
        batch_size=16,
        latency_batch_sizes=(1,),
        latency_runs=2,
        verbose=0,
    )
    assert report.pivots == []
    assert report.history["distill"]["output_mse"][0] > 0
    assert report.accuracy("distilled") == pytest.approx(_accuracy(slim, *_data(16, 5)))


def test_bad_input():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    data = (np.zeros((8, 4), "float32"), np.zeros(8, "int32"))
    with pytest.raises(NothingToPruneError, match="no channels"):
        hos_keras.compress(model, data, data, verbose=0)
    cnn = keras.Sequential(
        [keras.Input((8, 8, 1)), layers.Conv2D(4, 3), layers.Flatten(), layers.Dense(2)]
    )
    images = (np.zeros((8, 8, 8, 1), "float32"), np.zeros(8, "int32"))
    with pytest.raises(InvalidArgumentError, match="val_data=None"):
        hos_keras.compress(cnn, images, None)
    with pytest.raises(InvalidArgumentError, match="tuple of 4 items"):
        hos_keras.compress(cnn, images + images, images)
    with pytest.raises(InvalidArgumentError, match="of type list"):
        hos_keras.compress(cnn, [1, 2], images)
    with pytest.raises(InvalidArgumentError, match="distill_epochs=-1"):
        hos_keras.compress(cnn, images, images, distill_epochs=-1)
    with pytest.raises(InvalidArgumentError, match="finetune_epochs=1.5"):
        hos_keras.compress(cnn, images, images, finetune_epochs=1.5)
    with pytest.raises(InvalidArgumentError, match="allocation=.*by name"):
        hos_keras.compress(
            cnn,
            images,
            images,
            macs_reduction=0.5,
            allocation=hos_keras.GlobalAllocation(),
        )
    with pytest.raises(InvalidArgumentError, match="macs_reduction=1.5"):
        hos_keras.compress(cnn, images, images, macs_reduction=1.5)
    with pytest.raises(InvalidArgumentError, match="stage='best'"):
        hos_keras.CompressionReport(
            "m", "k34", "fixed", {}, {}, {}, {}, {}, [], [], {}
        ).accuracy("best")


def test_plot_writes_a_png(resnet_run, tmp_path):
    report = resnet_run[-1]
    path = tmp_path / "layers.png"
    report.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
    empty = hos_keras.CompressionReport(
        "m", "k34", "fixed", {}, {}, {"original": 1, "slim": 1}, {}, {}, [], [], {}
    )
    with pytest.raises(InvalidArgumentError, match="no pruned layers"):
        empty.plot(str(tmp_path / "none.png"))


def test_figures_show_what_they_say(resnet_run, tmp_path):
    report = resnet_run[-1]  # allocation "target" over shapiro
    figure = report.layers_figure()
    top, bottom = figure.axes
    assert bottom.get_ylabel() == "T: Shapiro-Wilk W"
    heights = [bar.get_height() for bar in top.patches]
    n = len(report.layers)
    assert heights[:n] == [layer["channels"] for layer in report.layers]
    assert heights[n:] == [layer["kept"] for layer in report.layers]
    # Groups left whole are drawn in their own colour, not as empty bars.
    whole = [i for i, layer in enumerate(report.layers) if layer["ratio"] == 0]
    colours = {tuple(top.patches[n + i].get_facecolor()) for i in whole}
    pruned = {tuple(top.patches[n + i].get_facecolor()) for i in range(n)} - colours
    assert whole and colours and pruned and not colours & pruned
    stages = report.stages_figure()
    left, right = stages.axes
    labels = [t.get_text() for t in left.get_xticklabels()]
    assert labels == ["original", "pruned", "BN recal.", "distilled", "fine-tuned"]
    expected = [report.accuracy(s) for s in STAGES if s in report.metrics]
    assert [bar.get_height() for bar in left.patches] == pytest.approx(expected)
    names = [t.get_text() for t in right.get_yticklabels()]
    assert names[:2] == ["MACs", "params"] and "TFLite latency b1" in names
    macs = report.macs["original"] / report.macs["slim"]
    assert right.patches[0].get_width() == pytest.approx(macs)
    report.plot_stages(str(tmp_path / "stages.png"))
    assert (tmp_path / "stages.png").read_bytes()[:4] == b"\x89PNG"


class _LearningRates(keras.callbacks.Callback):
    """The learning rate the optimizer applies, read before every training step."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        self.seen.append(float(rate))


def test_learning_rate_schedules_reach_the_optimizer():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            layers.Conv2D(4, 3, activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(3),
        ]
    )
    rates = _LearningRates()
    # 16 images in batches of 8: two steps per epoch. The distillation decays
    # x0.1 at epochs 1 and 3 (MultiStepLR-style, by epoch); the fine-tuning
    # x0.1 after its third step, within its second epoch (a step schedule). Both
    # replace the optimizers' own rates (0.5 here, 1e-4 by default).
    _, report = hos_keras.compress(
        model,
        _data(16, 6),
        _data(8, 7),
        allocation="fixed",
        ratio=0.5,
        distill_epochs=4,
        finetune_epochs=2,
        distill_optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
        distill_lr_schedule=lambda epoch: 0.1 * 0.1 ** ((epoch >= 1) + (epoch >= 3)),
        finetune_lr_schedule=keras.optimizers.schedules.PiecewiseConstantDecay(
            [2], [0.01, 0.001]
        ),
        batch_size=8,
        callbacks=[rates],
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    distill, finetune = rates.seen[:8], rates.seen[8:]
    np.testing.assert_allclose(
        distill, [0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001, 0.001], rtol=1e-6
    )
    np.testing.assert_allclose(finetune, [0.01, 0.01, 0.01, 0.001], rtol=1e-6)
    np.testing.assert_allclose(
        report.history["distill"]["learning_rate"], [0.1, 0.01, 0.01, 0.001], rtol=1e-6
    )
    cnn = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(4, 3)])
    images = _data(8, 8)
    with pytest.raises(InvalidArgumentError, match="distill_lr_schedule=0.1"):
        hos_keras.compress(cnn, images, images, distill_lr_schedule=0.1)
    with pytest.raises(InvalidArgumentError, match="returned nan for epoch 0"):
        hos_keras.compress(cnn, images, images, finetune_lr_schedule=lambda e: np.nan)


# The paper's approaches A2 (decompose only) and A3 (prune, then decompose).


@pytest.mark.parametrize("approach", ["decompose", "prune+decompose"])
def test_decomposing_approaches_run_end_to_end(approach, tmp_path):
    keras.utils.set_random_seed(0)
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    train, val = _data(64, 0), _data(32, 1)
    options = {"macs_reduction": 0.4} if approach == "prune+decompose" else {}
    slim, report = hos_keras.compress(
        model,
        train,
        val,
        approach=approach,
        decompose_factor=2.0,
        distill_epochs=1,
        finetune_epochs=0,
        batch_size=32,
        latency_batch_sizes=(),
        tflite_latency=False,
        output_dir=str(tmp_path),
        verbose=0,
        **options,
    )
    assert report.approach == approach
    # The student right after compression is what decompose makes of the
    # (pruned) model on its own: same layers, same accuracy on the data.
    pruned = model
    if approach == "prune+decompose":
        assert report.plan is not None and report.layers
        pruned = hos_keras.slim_model(model, report.plan)
    else:
        assert report.plan is None and report.layers == []
        assert report.criterion == report.allocation == "none"
    expected, decomposed = hos_keras.decompose(
        pruned, factor=2.0, data=val[0][:32], return_report=True
    )
    assert [layer.name for layer in slim.layers] == [
        layer.name for layer in expected.layers
    ]
    assert any(layer.name.endswith("_core") for layer in slim.layers)
    layers = report.decomposition["layers"]
    assert layers.keys() == decomposed.layers.keys()
    for name, entry in decomposed.layers.items():
        assert tuple(layers[name]["ranks"]) == tuple(entry["ranks"])
    assert report.accuracy("pruned") == pytest.approx(
        _accuracy(expected, *val), abs=1e-6
    )
    # Distillation matched block outputs found by name in the decomposed student.
    assert report.pivots and all(slim.get_layer(p) for p in report.pivots)
    assert "mse_" + report.pivots[0] in report.history["distill"]
    # Costs: the report's MACs are the student's, below the pruning alone.
    assert report.macs["slim"] == hos_keras.profile(slim)["macs"]
    assert report.macs["slim"] < hos_keras.profile(pruned)["macs"]
    # The files: a model that loads without custom objects, and the report.
    loaded = keras.models.load_model(tmp_path / "slim.keras")
    assert_same_outputs(slim, loaded, val[0][:4])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["approach"] == approach and saved["decomposition"]["layers"]
    assert (tmp_path / "plan.json").exists() == (approach == "prune+decompose")


def test_decompose_approach_refuses_pruning_arguments():
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    data = _data(8, 0)
    with pytest.raises(InvalidArgumentError, match="approach='prune\\+decompose'"):
        hos_keras.compress(model, data, data, approach="decompose", macs_reduction=0.5)
    with pytest.raises(InvalidArgumentError, match="coefficient=3.7"):
        hos_keras.compress(model, data, data, approach="decompose", coefficient=3.7)
    with pytest.raises(InvalidArgumentError, match="approach='both'"):
        hos_keras.compress(model, data, data, approach="both")


def test_a_data_criterion_reads_the_training_data():
    keras.utils.set_random_seed(0)
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    train, val = _data(48, 0), _data(16, 1)
    _, report = hos_keras.compress(
        model,
        train,
        val,
        criterion="fisher",
        calibration_steps=1,
        macs_reduction=0.4,
        distill_epochs=0,
        finetune_epochs=0,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    expected = hos_keras.plan_pruning(
        model,
        "fisher",
        "target",
        macs_reduction=0.4,
        base="shapiro",
        data=train,
        calibration_steps=1,
    )
    assert report.plan == expected and report.criterion == "fisher"
    _, report = hos_keras.compress(
        model,
        train,
        val,
        criterion="l1",
        allocation="itpruner",
        macs_reduction=0.4,  # ITPruner allocates for the target itself
        calibration_steps=1,
        distill_epochs=0,
        finetune_epochs=0,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    assert report.plan == hos_keras.plan_pruning(
        model, "l1", "itpruner", macs_reduction=0.4, data=train, calibration_steps=1
    )


def test_sparse_training_before_planning():
    keras.utils.set_random_seed(0)
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    x, y = _data(48, 0)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    val = _data(16, 1)
    options = {"criterion": "l1", "allocation": "fixed", "ratio": 0.5}
    _, report = hos_keras.compress(
        model,
        train,
        val,
        **options,
        sparse_epochs=1,
        sparse={"strength": 0.5},
        recalibration_steps=0,
        distill_epochs=0,
        finetune_epochs=0,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    # The same sparse training by hand: a copy, SGD(1e-2, Nesterov), one epoch.
    sparse = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    sparse.set_weights(model.get_weights())
    sparse.compile(
        keras.optimizers.SGD(1e-2, momentum=0.9, nesterov=True),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    sparse.fit(
        train,
        epochs=1,
        callbacks=[hos_keras.GroupSparsity("l1", strength=0.5)],
        verbose=0,
        shuffle=False,
    )
    expected = hos_keras.plan_pruning(sparse, **options)
    assert {n: list(g.keep) for n, g in report.plan.groups.items()} == {
        n: list(g.keep) for n, g in expected.groups.items()
    }
    assert report.accuracy("original") == pytest.approx(_accuracy(model, *val))
    assert report.accuracy("sparse") == pytest.approx(_accuracy(sparse, *val))
    masked = hos_keras.mask_model(sparse, expected)
    assert report.accuracy("pruned") == pytest.approx(_accuracy(masked, *val))
    with pytest.raises(InvalidArgumentError, match="sparse_epochs=1"):
        hos_keras.compress(model, train, val, approach="decompose", sparse_epochs=1)


def _injected(*args, **kwargs):
    raise RuntimeError("injected fault")


FAULTS = {
    "planning": ("hos_keras.specs.plan_pruning", {}),
    "slimming": ("hos_keras.surgery.slim_model", {}),
    "decomposition": (
        "hos_keras.compress.decompose",
        {"approach": "prune+decompose"},
    ),
    "recalibration": ("hos_keras.compress.recalibrate_batchnorm", {}),
    "distillation": ("hos_keras.distill.HOSDistiller.fit", {}),
    "fine-tuning": ("hos_keras.distill.HOSDistiller.fit", {"distill_epochs": 0}),
    "latency measurement": ("hos_keras.latency.original_and_slim", {}),
    "writing the output files": ("hos_keras.report.CompressionReport.to_json", {}),
}


@pytest.mark.parametrize("stage", list(FAULTS))
def test_a_fault_in_any_stage_names_it_and_leaves_the_model_unchanged(
    stage, monkeypatch, tmp_path
):
    """An error raised inside each stage of compress surfaces as a hos_keras
    StageError naming the stage (chained to the original), and the caller's
    model keeps its weights, outputs and trainable flags."""
    keras.utils.set_random_seed(0)
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    train, val = _data(32, 0), _data(16, 1)
    before = [np.array(w) for w in model.get_weights()]
    outputs_before = keras.ops.convert_to_numpy(model(val[0][:4], training=False))
    target, options = FAULTS[stage]
    module, name = target.rsplit(".", 1)
    if module in sys.modules:  # hos_keras.compress is shadowed by the function
        monkeypatch.setattr(sys.modules[module], name, _injected)
    else:
        monkeypatch.setattr(target, _injected)
    with pytest.raises(StageError, match=f"during {re.escape(stage)}") as caught:
        hos_keras.compress(
            model,
            train,
            val,
            allocation="fixed",
            ratio=0.5,
            **{"distill_epochs": 1, "finetune_epochs": 1, **options},
            recalibration_steps=1,
            latency_runs=2,
            latency_batch_sizes=[1],
            output_dir=tmp_path,
            batch_size=16,
            verbose=0,
        )
    assert caught.value.stage == stage
    assert isinstance(caught.value.__cause__, RuntimeError)
    for a, b in zip(before, model.get_weights(), strict=True):
        assert a.tobytes() == np.asarray(b).tobytes()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(val[0][:4], training=False)), outputs_before
    )
    assert model.trainable and all(layer.trainable for layer in model.layers)


def test_a_hos_keras_error_keeps_its_type_and_gains_the_stage():
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    with pytest.raises(InvalidArgumentError) as caught:
        hos_keras.compress(
            model, _data(16, 0), _data(16, 1), macs_reduction=0.999, verbose=0
        )
    assert caught.value.stage == "planning"
    assert "(raised during planning)" in caught.value.__notes__


def _resumable(directory, kill=""):
    """Runs tests/scripts/resumable_compress.py; returns (status, report)."""
    script = Path(__file__).parent / "scripts" / "resumable_compress.py"
    result = subprocess.run(
        [sys.executable, str(script), str(directory), kill],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode:
        return result.returncode, result.stderr[-3000:]
    return 0, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="Open regression (issue 28): in a fresh clone with a fresh .venv the "
    "resumed student's first weights differ from the uninterrupted run's "
    "(-0.13143 against -0.13188); intermittent (it also passes there and in the "
    "working tree), not yet explained.",
)
def test_a_killed_compress_resumes_from_its_record_and_ends_as_an_unkilled_one(
    tmp_path,
):
    """SIGKILL during the distillation (mid-epoch), then again during the
    fine-tuning: each call resumes from the recorded plan and the last finished
    epoch (optimizer state included), and the final student equals an
    uninterrupted run's bit for bit under TensorFlow's op determinism, with the
    same evaluations and a history that covers every epoch."""
    status, expected = _resumable(tmp_path / "whole")
    assert status == 0, expected
    run = tmp_path / "killed"
    status, _ = _resumable(run, "distill:1:1")
    assert status == -9
    progress = json.loads((run / "progress.json").read_text())
    assert progress["epochs_done"] == 1 and progress["planned"]
    plan_text = (run / "plan.json").read_text()
    status, _ = _resumable(run, "finetune:1:2")
    assert status == -9
    assert json.loads((run / "progress.json").read_text())["epochs_done"] == 3
    assert (run / "plan.json").read_text() == plan_text  # never planned again
    status, resumed = _resumable(run)
    assert status == 0, resumed
    assert resumed["first"] == expected["first"]
    assert resumed["weights"] == expected["weights"]
    assert resumed["metrics"] == expected["metrics"]
    for stage in ("distill", "finetune"):
        assert resumed["history"][stage]["loss"] == expected["history"][stage]["loss"]
        assert len(resumed["history"][stage]["loss"]) == 2


def test_output_dir_of_another_run_is_refused(tmp_path):
    model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(16, 16, 3), width=8
    )
    train, val = _data(16, 0), _data(16, 1)
    options = {
        "allocation": "fixed",
        "distill_epochs": 0,
        "finetune_epochs": 0,
        "latency_batch_sizes": (),
        "tflite_latency": False,
        "output_dir": tmp_path,
        "verbose": 0,
    }
    hos_keras.compress(model, train, val, ratio=0.5, **options)
    with pytest.raises(InvalidArgumentError, match="another arguments.*same model"):
        hos_keras.compress(model, train, val, ratio=0.25, **options)
