"""HOSHyperModel with KerasTuner: searches, budget, resume, best student, errors."""

import invariants
import keras
import keras_tuner
import numpy as np
import pytest
import tiny
from keras import layers

import hos_keras
from hos_keras.errors import InvalidArgumentError, NothingToPruneError
from hos_keras.tuner import HOSHyperModel


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 12, 3)).astype("float32")
    return x, (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype("int32") + (
        x[:, 8:].mean(axis=(1, 2, 3)) > 0
    ).astype("int32")


class CountingHyperModel(HOSHyperModel):
    """Counts how many trials were trained (fit called)."""

    fits = 0

    def fit(self, hp, model, *args, **kwargs):
        CountingHyperModel.fits += 1
        return super().fit(hp, model, *args, **kwargs)


@pytest.fixture(scope="module")
def base():
    return tiny.chain((16, 16, 16), input_shape=(12, 12, 3), head="logits")


def _search(tuner, n=32):
    x, y = _data(n, 1)
    tuner.search(x, y, batch_size=16, validation_data=_data(16, 2), verbose=0)


def test_random_search_finds_a_student_within_budget_and_resumes(base, tmp_path):
    hypermodel = CountingHyperModel(base, macs_reduction=0.3, coefficient=(0.6, 1.2))
    CountingHyperModel.fits = 0

    def tuner(max_trials):
        return keras_tuner.RandomSearch(
            hypermodel,
            objective=hypermodel.objective,
            max_trials=max_trials,
            seed=1,
            directory=str(tmp_path),
            project_name="p",
            overwrite=False,
        )

    first = tuner(2)
    _search(first)
    assert CountingHyperModel.fits == 2
    completed = [t for t in first.oracle.trials.values() if t.status == "COMPLETED"]
    assert len(completed) == 2
    student = hypermodel.best_student(first)
    macs = hos_keras.profile(student)["macs"]
    assert macs <= hypermodel.macs_budget
    assert macs <= 0.7 * hos_keras.profile(base)["macs"]
    # The loaded student is the trained one: its accuracy is the trial's.
    best = first.oracle.get_best_trials(1)[0]
    xv, yv = _data(16, 2)
    predicted = np.argmax(keras.ops.convert_to_numpy(student(xv)), axis=1)
    assert np.mean(predicted == yv) == pytest.approx(
        best.metrics.get_last_value("val_accuracy")
    )
    assert best.metrics.get_last_value("hos_score") == pytest.approx(
        best.metrics.get_last_value("val_accuracy")
    )
    student.save(tmp_path / "student.keras")
    reloaded = keras.models.load_model(tmp_path / "student.keras")
    invariants.assert_same_outputs(reloaded, student, xv)

    # Same directory, overwrite=False: finished trials are not run again.
    again = tuner(2)
    _search(again)
    assert CountingHyperModel.fits == 2
    more = tuner(3)
    _search(more)
    assert CountingHyperModel.fits == 3
    assert len(more.oracle.trials) == 3


def test_bayesian_optimization_and_hyperband(base, tmp_path):
    hypermodel = HOSHyperModel(
        base, macs_reduction=0.2, coefficient=(0.6, 1.5), criterion="k34"
    )
    bayes = keras_tuner.BayesianOptimization(
        hypermodel,
        objective=hypermodel.objective,
        max_trials=2,
        num_initial_points=1,
        seed=0,
        directory=str(tmp_path),
        project_name="bayes",
    )
    _search(bayes)
    assert sum(t.status == "COMPLETED" for t in bayes.oracle.trials.values()) == 2
    hyperband = keras_tuner.Hyperband(
        hypermodel,
        objective=hypermodel.objective,
        max_epochs=2,
        factor=2,
        hyperband_iterations=1,
        seed=0,
        directory=str(tmp_path),
        project_name="hyperband",
    )
    _search(hyperband)
    trials = list(hyperband.oracle.trials.values())
    assert trials and all(t.status == "COMPLETED" for t in trials)
    assert any("tuner/trial_id" in t.hyperparameters.values for t in trials)
    student = hypermodel.best_student(hyperband)
    assert hos_keras.profile(student)["macs"] <= hypermodel.macs_budget


def test_unreachable_budget_is_reported_after_the_search(base, tmp_path):
    hypermodel = CountingHyperModel(base, macs_reduction=0.95, coefficient=(3.0, 8.0))
    CountingHyperModel.fits = 0
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective=hypermodel.objective,
        max_trials=2,
        seed=0,
        directory=str(tmp_path),
        project_name="unreachable",
    )
    _search(tuner)
    for trial in tuner.oracle.trials.values():
        score = trial.metrics.get_last_value("hos_score")
        macs = trial.metrics.get_last_value("macs")
        assert score == pytest.approx(
            -(macs - hypermodel.macs_budget) / hypermodel.macs_budget
        )
        assert score < 0
        assert not trial.metrics.exists("val_accuracy")  # rejected, not trained
    with pytest.raises(InvalidArgumentError, match="No trial met the budget"):
        hypermodel.best_student(tuner)


def test_score_orders_every_feasible_trial_above_every_infeasible_one(base):
    with pytest.warns(DeprecationWarning, match="pass macs_reduction="):
        hypermodel = HOSHyperModel(base, macs_budget=1000)
    assert hypermodel.score(1000, 0.0) == 0.0
    assert hypermodel.score(900, 0.73) == 0.73
    assert hypermodel.score(1500, 1.0) == -0.5
    assert hypermodel.score(1100, 1.0) > hypermodel.score(1500, 1.0)


def test_penalize_trains_over_budget_trials(base, tmp_path):
    hypermodel = HOSHyperModel(
        base,
        macs_reduction=0.95,
        coefficient=(3.0, 8.0),
        over_budget="penalize",
        distill_epochs=1,
        finetune_epochs=0,
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective=hypermodel.objective,
        max_trials=1,
        directory=str(tmp_path),
        project_name="penalize",
    )
    _search(tuner)
    trial = next(iter(tuner.oracle.trials.values()))
    assert trial.metrics.exists("val_accuracy")
    assert trial.metrics.get_last_value("hos_score") < 0


def test_bad_input(base):
    with pytest.raises(InvalidArgumentError, match="search space is empty"):
        HOSHyperModel(
            base,
            macs_reduction=0.5,
            coefficient=3.0,
            criterion="k34",
            output_weight=1.0,
            decay=3.0,
            learning_rate=0.01,
        )
    with pytest.raises(InvalidArgumentError, match="criterion=\\[\\]"):
        HOSHyperModel(base, macs_reduction=0.5, criterion=[])
    with pytest.raises(InvalidArgumentError, match="pass exactly one"):
        HOSHyperModel(base)
    with (
        pytest.warns(DeprecationWarning, match="pass macs_reduction="),
        pytest.raises(InvalidArgumentError, match="pass exactly one"),
    ):
        HOSHyperModel(base, macs_budget=10, macs_reduction=0.5)
    with pytest.raises(InvalidArgumentError, match="macs_reduction=1.5"):
        HOSHyperModel(base, macs_reduction=1.5)
    with pytest.raises(InvalidArgumentError, match="low < high"):
        HOSHyperModel(base, macs_reduction=0.5, coefficient=(5.0, 2.0))
    with pytest.raises(InvalidArgumentError, match="allocation='fixed'"):
        HOSHyperModel(base, macs_reduction=0.5, allocation="fixed")
    with pytest.raises(InvalidArgumentError, match="over_budget='skip'"):
        HOSHyperModel(base, macs_reduction=0.5, over_budget="skip")
    dense = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    with pytest.raises(NothingToPruneError, match="nothing to search"):
        HOSHyperModel(dense, macs_reduction=0.5)
    hypermodel = HOSHyperModel(base, macs_reduction=0.1)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    with pytest.raises(InvalidArgumentError, match="validation_data"):
        hypermodel.fit(hp, model, *_data(8, 0))


def test_scope_and_skip_reach_every_trial_plan(base):
    hypermodel = HOSHyperModel(
        base, macs_reduction=0.3, allocation="global", fraction=0.5, skip=["c2"]
    )
    plan = hypermodel.plan(keras_tuner.HyperParameters())
    assert len(plan["c2"].keep) == 16
    assert plan.details["excluded"] == ["c2"]
    assert plan == hos_keras.plan_pruning(
        base, "k34", "global", fraction=0.5, skip=["c2"]
    )


def test_a_data_criterion_plans_on_the_calibration_data(base):
    x = np.random.default_rng(0).normal(size=(8, *base.input_shape[1:]))
    y = np.arange(8) % base.output_shape[-1]
    data = (x.astype("float32"), y)
    hypermodel = HOSHyperModel(
        base,
        macs_reduction=0.3,
        allocation="global",
        fraction=0.4,
        criterion=["taylor", "k34"],
        calibration_data=data,
        calibration_steps=1,
    )
    hp = keras_tuner.HyperParameters()
    hp.Fixed("criterion", "taylor")
    plan = hypermodel.plan(hp)
    assert plan == hos_keras.plan_pruning(
        base, "taylor", "global", fraction=0.4, data=data, calibration_steps=1
    )
    with pytest.raises(
        InvalidArgumentError, match="calibration_data=None with.*criterion='taylor'"
    ):
        HOSHyperModel(base, macs_reduction=0.3, criterion=["taylor", "k34"])


def test_itpruner_searches_beta_at_the_macs_budget(base):
    x = np.random.default_rng(0).normal(size=(8, *base.input_shape[1:]))
    data = (x.astype("float32"), np.arange(8) % base.output_shape[-1])
    hypermodel = HOSHyperModel(
        base,
        macs_reduction=0.4,
        allocation="itpruner",
        beta=(1.0, 4.0),
        criterion="l1",
        calibration_data=data,
    )
    hp = keras_tuner.HyperParameters()
    hp.Fixed("beta", 2.0)
    plan = hypermodel.plan(hp)
    share = 1 - hypermodel.macs_budget / hypermodel.macs_original  # 0.4, floored
    assert plan == hos_keras.plan_pruning(
        base, "l1", "itpruner", beta=2.0, macs_reduction=share, data=data
    )
    assert plan.macs_after <= hypermodel.macs_budget
    with pytest.raises(InvalidArgumentError, match="itpruner"):
        HOSHyperModel(base, macs_reduction=0.4, allocation="itpruner", criterion="l1")


def test_a_trial_re_estimates_its_batch_norms_before_training():
    keras.utils.set_random_seed(0)
    bn_model = hos_keras.models.cifar_resnet(
        depth=8, num_classes=3, input_shape=(12, 12, 3), width=8
    )
    hypermodel = HOSHyperModel(
        bn_model,
        macs_reduction=0.3,
        coefficient=(0.6, 1.2),
        distill_epochs=0,
        finetune_epochs=0,
        recalibration_steps=2,
    )
    hp = keras_tuner.HyperParameters()
    distiller = hypermodel.build(hp)
    (x, y), (xv, yv) = _data(48, 1), _data(16, 2)
    result = hypermodel.fit(
        hp, distiller, x, y, batch_size=16, validation_data=(xv, yv)
    )
    # The student evaluated is the slim model with its batch norms re-estimated
    # on the first two training batches.
    expected = hos_keras.slim_model(bn_model, hypermodel.plan(hp))
    moved = hos_keras.recalibrate_batchnorm(expected, x, 2, batch_size=16)
    assert moved and set(moved.values()) == {32}
    for a, b in zip(expected.weights, distiller.student.weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    logits = np.asarray(expected(xv))
    assert result["val_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == yv))
    with pytest.raises(InvalidArgumentError, match="recalibration_steps=-1"):
        HOSHyperModel(bn_model, macs_reduction=0.3, recalibration_steps=-1)


def test_an_over_budget_trial_says_it_was_skipped(base, capsys):
    hypermodel = HOSHyperModel(base, macs_reduction=0.95, coefficient=(3.0, 8.0))
    hp = keras_tuner.HyperParameters()
    distiller = hypermodel.build(hp)
    result = hypermodel.fit(hp, distiller, *_data(8, 0), validation_data=_data(8, 1))
    line = capsys.readouterr().out.strip()
    assert line == (
        "[hos_keras] trial skipped, not trained: over budget "
        f"({result['macs_reduction']:.1%} fewer MACs, the budget needs 95.0%); "
        f"hos_score {result['hos_score']:.3f} ranks it below every trial within budget."
    )
    hypermodel.fit(hp, distiller, *_data(8, 0), validation_data=_data(8, 1), verbose=0)
    assert capsys.readouterr().out == ""


def test_sparse_training_before_the_search(base):
    x, y = _data(32, 1)
    kept = [w.copy() for w in base.get_weights()]
    keras.utils.set_random_seed(7)
    hypermodel = HOSHyperModel(
        base,
        macs_reduction=0.3,
        coefficient=(0.6, 1.2),
        criterion="l1",
        sparse_epochs=1,
        sparse={"strength": 0.2},
        sparse_data=(x, y),
    )
    # By hand: a copy trained one epoch with GroupSparsity, as compress does.
    keras.utils.set_random_seed(7)
    by_hand = type(base).from_config(base.get_config())
    by_hand.set_weights(base.get_weights())
    by_hand.compile(
        optimizer=keras.optimizers.SGD(1e-2, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    sparsity = hos_keras.GroupSparsity("l1", strength=0.2)
    by_hand.fit(x, y, epochs=1, callbacks=[sparsity], verbose=0)
    for got, want in zip(
        hypermodel.pruned_from.get_weights(), by_hand.get_weights(), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The base model is untouched and stays every trial's teacher; the
    # student is slimmed from the sparse model.
    for got, want in zip(base.get_weights(), kept, strict=True):
        np.testing.assert_array_equal(got, want)
    hp = keras_tuner.HyperParameters()
    distiller = hypermodel.build(hp)
    assert distiller.teacher is base
    expected = hos_keras.slim_model(by_hand, distiller.hos_plan)
    invariants.assert_same_outputs(distiller.student, expected, x[:4], 1e-4, 1e-5)
    with pytest.raises(InvalidArgumentError, match="sparse_data"):
        HOSHyperModel(base, macs_reduction=0.3, sparse_epochs=1)
