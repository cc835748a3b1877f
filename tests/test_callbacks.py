"""HOSPruneCallback inside model.fit: masks stay zero, slim equals masked."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import scipy.stats
import tiny
from invariants import assert_equivalent, different_plan, outputs

import hos_keras
from hos_keras.errors import InvalidArgumentError
from hos_keras.plan import restrict_plan


def _data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamw"])
def test_fit_with_progressive_pruning(tmp_path, optimizer):
    model = tiny.residual_cnn()
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
    decoys = [outputs(hos_keras.mask_model(model, different_plan(plan)), xs)]
    for name, expected in (("masked", reference), ("trained", model)):
        assert_equivalent(
            outputs(expected, xs),
            outputs(slim, xs),
            decoys=decoys,
            name=f"the callback's slim model against the {name} model",
        )
    assert slim.count_params() < model.count_params()
    assert json.loads(plan_path.read_text())["allocation"] == "fixed"
    # With data, the slim model's batch norms are re-estimated on it.
    recalibrated = callback.slim_model(data=x, steps=2)
    assert hos_keras.recalibrate_batchnorm(slim, x, 2) == {"bn1": 32}
    moved = recalibrated.get_layer("bn1").moving_mean.numpy()
    np.testing.assert_allclose(moved, slim.get_layer("bn1").moving_mean.numpy())
    group = next(g for g in plan.groups.values() if "c1" in g.producers)
    trained = model.get_layer("bn1").moving_mean.numpy()[group.keep]
    assert not np.allclose(moved, trained)  # training's are moving averages


def test_bad_arguments(tmp_path):
    for bad in ([], [2, 1], [0], [1, 1], "3"):
        with pytest.raises(InvalidArgumentError, match="prune_epochs"):
            hos_keras.HOSPruneCallback(prune_epochs=bad)
    with pytest.raises(InvalidArgumentError, match="one value per epoch"):
        hos_keras.HOSPruneCallback(prune_epochs=[1, 2], allocation="fixed", ratio=[0.5])
    with pytest.raises(InvalidArgumentError, match="does not exist; create it"):
        hos_keras.HOSPruneCallback(
            prune_epochs=[1], plan_path=str(tmp_path / "missing" / "p.json")
        )
    model = tiny.residual_cnn()
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
    model = tiny.residual_cnn()
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


# _cnn's prunable groups and their producers; "c1" is tied to "c2" by the Add.
_GROUPS = {"c1": ("c1", "c2"), "c3": ("c3",)}


class _Snapshot(keras.callbacks.Callback):
    """Keeps the kernels and the plan a pruning callback sees at an epoch's end
    (listed before it, so the callback has not pruned yet)."""

    def __init__(self, pruner, epoch):
        super().__init__()
        self.pruner, self.epoch = pruner, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.plan = self.pruner.plan
            self.kernels = {
                name: np.asarray(self.model.get_layer(name).kernel)
                for name in ("c1", "c2", "c3")
            }


def _step_two(**options):
    """The plan of a second pruning step, the plan before it and the kernels the
    second step saw, from a short fit."""
    model = _compiled_cnn()
    pruner = hos_keras.HOSPruneCallback(prune_epochs=[1, 2], verbose=0, **options)
    snapshot = _Snapshot(pruner, epoch=1)
    x, y = _data(16)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[snapshot, pruner])
    return pruner.plan, snapshot.plan, snapshot.kernels


def _slim_kernels(kernels, plan):
    """_cnn's kernels minus the channels `plan` removes, sliced by hand."""
    keep1, keep3 = plan["c1"].keep, plan["c3"].keep
    return {
        "c1": kernels["c1"][..., keep1],
        "c2": kernels["c2"][:, :, keep1][..., keep1],
        "c3": kernels["c3"][:, :, keep1][..., keep3],
    }


def _k34(kernel):
    filters = kernel.reshape(-1, kernel.shape[-1])
    return np.array(
        [
            scipy.stats.kstat(f, 3) * scipy.stats.kstat(f, 4)
            for f in filters.T.astype(np.float64)
        ]
    )


def test_later_steps_take_statistics_on_the_slim_model():
    plan, first, kernels = _step_two(allocation="shapiro", coefficient=2.0)
    assert any(len(g.keep) < g.channels for g in first.groups.values())
    slim = _slim_kernels(kernels, first)
    differs = False
    for group, producers in _GROUPS.items():
        on_slim = np.concatenate([slim[p].ravel() for p in producers])
        on_masked = np.concatenate([kernels[p].ravel() for p in producers])
        expected = scipy.stats.shapiro(on_slim).statistic
        assert plan[group].statistic == pytest.approx(expected, rel=1e-5)
        masked = scipy.stats.shapiro(on_masked).statistic
        differs |= not np.isclose(masked, expected, rtol=1e-3)
    assert differs


def test_later_steps_rank_filters_on_the_slim_model():
    plan, first, kernels = _step_two(
        criterion="k34",
        allocation="fixed",
        ratio=[{"c1": 0.25, "c3": 0.5}, {"c1": 0.5, "c3": 0.25}],
    )
    slim = _slim_kernels(kernels, first)
    # Ratios are of the original widths: c1 8 -> 6 -> 4; c3 6 -> 3, and 0.25
    # asks for no more, so c3 reports the ratio it has.
    assert [len(plan[g].keep) for g in _GROUPS] == [4, 3]
    assert [plan[g].ratio for g in _GROUPS] == [0.5, 0.5]
    differs = False
    for group, producers in _GROUPS.items():
        earlier = first[group].keep
        expected = np.mean([_k34(slim[p]) for p in producers], axis=0)
        np.testing.assert_allclose(plan[group].scores[earlier], expected, rtol=1e-5)
        masked = np.mean([_k34(kernels[p]) for p in producers], axis=0)[earlier]
        differs |= not np.allclose(masked, expected, rtol=1e-3)
        # The highest slim scores are the ones kept.
        best = np.argsort(expected)[len(expected) - len(plan[group].keep) :]
        np.testing.assert_array_equal(plan[group].keep, np.sort(earlier[best]))
    assert differs


def test_later_macs_targets_stay_relative_to_the_original_model():
    plan, first, _ = _step_two(
        criterion="l1", allocation="target", base="fixed", macs_reduction=[0.2, 0.4]
    )
    assert 0.2 <= first.macs_reduction < plan.macs_reduction
    assert plan.macs_reduction >= 0.4
    assert plan.details["achieved_macs_reduction"] == pytest.approx(plan.macs_reduction)
    for group in _GROUPS:
        assert set(plan[group].keep) <= set(first[group].keep)


@pytest.mark.parametrize("swap", [False, True], ids=["ema", "swap_ema_weights"])
def test_masks_hold_with_an_ema_optimizer(swap):
    model = tiny.residual_cnn()
    model.compile(
        optimizer=keras.optimizers.AdamW(0.01, use_ema=True, ema_momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pruner = hos_keras.HOSPruneCallback(
        prune_epochs=[1], criterion="l1", allocation="fixed", ratio=0.5, verbose=0
    )
    callbacks = [pruner]
    if swap:
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    x, y = _data(8)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    masks = hos_keras.weight_masks(model, pruner.plan)
    averages = dict(
        zip(
            [v.path for v in model.optimizer._trainable_variables],
            model.optimizer._model_variables_moving_average,
            strict=True,
        )
    )
    checked = 0
    for name, layer_masks in masks.items():
        layer = model.get_layer(name)
        for variable, mask in zip(layer.weights, layer_masks, strict=True):
            assert np.all(np.asarray(variable)[~mask] == 0), variable.path
            if variable.path in averages:
                average = np.asarray(averages[variable.path])
                assert np.all(average[~mask] == 0), variable.path
                checked += int(np.count_nonzero(~mask))
    assert checked > 0


def test_several_steps_per_execution_are_refused():
    model = tiny.residual_cnn()
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=2,
    )
    pruner = hos_keras.HOSPruneCallback(prune_epochs=[1], verbose=0)
    x, y = _data(8)
    with pytest.raises(InvalidArgumentError, match="steps_per_execution=2"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[pruner])


def _with_groups(plan, **groups):
    """`plan` with the given groups' keep, ratio and scores replaced."""
    replaced = dict(plan.groups)
    for name, (keep, ratio, scores) in groups.items():
        replaced[name] = dataclasses.replace(
            plan.groups[name],
            keep=np.array(keep, dtype=np.int64),
            ratio=ratio,
            scores=np.array(scores, dtype=np.float64),
        )
    return dataclasses.replace(plan, groups=replaced)


def test_restrict_plan_never_brings_back_a_channel_and_updates_ratios():
    model = tiny.residual_cnn()
    base = hos_keras.plan_pruning(model, criterion="l1", allocation="fixed", ratio=0.5)
    previous = _with_groups(
        base,
        c1=([0, 1, 2, 3], 0.5, np.zeros(8)),
        c3=([0, 1, 2, 3], 0.3, np.zeros(6)),
    )
    newer = _with_groups(
        base,
        # No overlap with the earlier keep; channel 1 scores best among it.
        c1=([4, 5, 6, 7], 0.5, [0.1, 0.9, 0.3, 0.2, 5.0, 5.0, 5.0, 5.0]),
        # Overlap of 2 of the 3 kept channels.
        c3=([2, 3, 4], 0.5, [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]),
    )
    restricted = restrict_plan(model, newer, previous)
    np.testing.assert_array_equal(restricted["c1"].keep, [1])
    assert restricted["c1"].ratio == pytest.approx(1 - 1 / 8)
    np.testing.assert_array_equal(restricted["c3"].keep, [2, 3])
    assert restricted["c3"].ratio == pytest.approx(1 - 2 / 6)
    slim = hos_keras.slim_model(model, restricted)
    assert restricted.macs_after == hos_keras.profile(slim)["macs"]
    # A kept count that does not change keeps the ratio asked for.
    same = restrict_plan(
        model, _with_groups(newer, c3=([0, 1, 2], 0.5, np.zeros(6))), previous
    )
    np.testing.assert_array_equal(same["c3"].keep, [0, 1, 2])
    assert same["c3"].ratio == 0.5


def test_a_skip_list_holds_for_every_step():
    plan, first, _ = _step_two(allocation="fixed", ratio=[0.25, 0.5], skip=["c3"])
    assert [len(first[g].keep) for g in _GROUPS] == [6, 6]
    assert [len(plan[g].keep) for g in _GROUPS] == [4, 6]
    assert plan.details["excluded"] == ["c3"]


def test_a_data_criterion_plans_every_step_on_the_calibration_set():
    model = tiny.residual_cnn()
    x, y = _data()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[1, 2],
        criterion="taylor",
        allocation="fixed",
        ratio=[0.25, 0.5],
        data=(x, y),
        calibration_steps=1,
        verbose=0,
    )
    seen = {}

    class Before(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                seen["weights"] = [w.copy() for w in self.model.get_weights()]

    class After(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                seen["plan"] = callback.plan

    model.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[Before(), callback, After()],
    )
    # The first step's plan is plan_pruning's on the weights at that epoch's end.
    twin = keras.models.clone_model(model)
    twin.set_weights(seen["weights"])
    expected = hos_keras.plan_pruning(
        twin, "taylor", "fixed", ratio=0.25, data=(x, y), calibration_steps=1
    )
    assert seen["plan"].criterion == "taylor"
    for name, group in expected.groups.items():
        np.testing.assert_allclose(seen["plan"][name].scores, group.scores, rtol=1e-5)
        np.testing.assert_array_equal(seen["plan"][name].keep, group.keep)
    assert callback.plan.macs_reduction > seen["plan"].macs_reduction
    # Without a calibration set the first pruning epoch says what is missing.
    missing = hos_keras.HOSPruneCallback(
        prune_epochs=[1], criterion="dfs", allocation="fixed", ratio=0.5, verbose=0
    )
    with pytest.raises(InvalidArgumentError, match="data=None"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[missing])


def test_sparse_training_runs_until_the_first_pruning_step():
    x, y = _data(16)

    def fit(callbacks, epochs):
        model = tiny.residual_cnn()
        # No task gradient: only the sparse training moves the weights.
        model.compile(
            keras.optimizers.SGD(0.1), loss=lambda t, p: 0.0 * keras.ops.sum(p)
        )
        model.fit(x, y, batch_size=8, epochs=epochs, callbacks=callbacks, verbose=0)
        return model

    alone = fit([hos_keras.GroupSparsity("l1", strength=0.05, skip=["c3"])], 1)
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[1],
        criterion="l1",
        allocation="fixed",
        ratio=0.5,
        skip=["c3"],
        sparse={"strength": 0.05},
        verbose=0,
    )
    pruned = fit([callback], 2)
    assert callback.sparse.criterion == "l1" and callback.sparse.skip == ["c3"]
    # Epoch 1 trained sparse exactly as GroupSparsity alone; then the plan's
    # masks; epoch 2 moved nothing.
    masks = hos_keras.weight_masks(alone, callback.plan)
    for layer, twin in zip(alone.layers, pruned.layers, strict=True):
        for i, (a, b) in enumerate(zip(layer.weights, twin.weights, strict=True)):
            if not a.trainable:
                continue  # moving statistics move in epoch 2
            a = a.numpy()
            expected = (
                np.where(masks[layer.name][i], a, 0) if layer.name in masks else a
            )
            np.testing.assert_allclose(b.numpy(), expected, rtol=1e-6, err_msg=b.path)
    untrained = tiny.residual_cnn().get_layer("c1").get_weights()[0]
    assert not np.allclose(alone.get_layer("c1").get_weights()[0], untrained)
    with pytest.raises(InvalidArgumentError, match="sparse='yes'"):
        hos_keras.HOSPruneCallback(prune_epochs=[1], sparse="yes")


def test_console_lines_stay_short_and_ratios_go_to_history(capsys):
    model = tiny.residual_cnn()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[1, 2], criterion="l1", allocation="fixed", ratio=[0.25, 0.5]
    )
    x, y = _data(16)
    history = model.fit(x, y, epochs=2, batch_size=8, callbacks=[callback], verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 120, lines
    assert not [line for line in lines if "ratio/" in line or "e+00" in line]
    assert [len(v) for v in history.history.values()] == [2] * len(history.history)
    assert [h["epoch"] for h in callback.history] == [1, 2]
    last = callback.history[-1]
    assert last["ratios"] == {g.name: g.ratio for g in callback.plan.groups.values()}
    assert last["macs_reduction"] == callback.plan.macs_reduction
