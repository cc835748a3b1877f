"""PruningSpec and TrainingSpec: validation, JSON round trips, the renamed
targets, and every entry point driven by a spec."""

import json
import re
import warnings

import keras
import pytest
import tiny

import hos_keras
from hos_keras import criteria, specs
from hos_keras.errors import ArgumentTypeError, InvalidArgumentError
from hos_keras.specs import PruningSpec, TrainingSpec


@pytest.mark.parametrize(
    "field, value, fix",
    [
        ("criterion", "k5", "pass one of"),
        ("allocation", "normal", "pass one of"),
        ("allocation_options", {"macs_reduction": 0.5}, "fields of PruningSpec"),
        ("macs_reduction", 1.5, "fraction in \\(0, 1\\)"),
        ("latency_reduction", 0.0, "fraction in \\(0, 1\\)"),
        ("runtime", "onnx", "pass one of"),
        ("min_channels", 0, "integer >= 1"),
        ("round_to", "8", "integer >= 1"),
        ("scope", "outer", "pass one of"),
        ("skip", [1], "names or patterns"),
        ("group_reduction", "median", "pass one of"),
        ("uniform", 1, "True or False"),
        ("calibration_steps", 0, "integer >= 1 or None"),
        ("latency_corrections", -1, "integer >= 0"),
    ],
)
def test_pruning_spec_errors_name_the_field_and_value(field, value, fix):
    with pytest.raises(InvalidArgumentError, match="PruningSpec received") as caught:
        PruningSpec(**{field: value})
    assert f"{field}={value!r}" in str(caught.value)
    assert re.search(fix, str(caught.value))
    assert caught.match(fix)


def test_pruning_spec_refuses_two_targets_and_a_target_with_an_instance():
    with pytest.raises(InvalidArgumentError, match="excludes macs_reduction=0.5"):
        PruningSpec(macs_reduction=0.5, latency_reduction=0.5)
    with pytest.raises(InvalidArgumentError, match="allocation=.*by name"):
        PruningSpec(allocation=hos_keras.GlobalAllocation(), macs_reduction=0.5)


@pytest.mark.parametrize(
    "field, value",
    [
        ("distill_epochs", -1),
        ("finetune_epochs", 1.5),
        ("distill_lr_schedule", 0.1),
        ("batch_size", 0),
        ("pivots", 3),
        ("n_pivots", -1),
        ("output_loss", "mse"),
        ("output_weight", float("nan")),
        ("decay", "fast"),
        ("recalibration_steps", -2),
        ("sparse_epochs", True),
    ],
)
def test_training_spec_errors_name_the_field_and_value(field, value):
    with pytest.raises(InvalidArgumentError, match="TrainingSpec received") as caught:
        TrainingSpec(**{field: value})
    assert f"{field}={value!r}" in str(caught.value)


def test_specs_round_trip_through_json():
    pruning = PruningSpec(
        criterion="abs_k34",
        allocation="global",
        allocation_options={"fraction": 0.3},
        scope="inner",
        skip=["stage3_*"],
        round_to=8,
        seed=None,
        calibration_steps=None,
    )
    assert pruning.skip == ("stage3_*",)
    text = json.dumps(pruning.to_dict())
    assert PruningSpec.from_dict(json.loads(text)) == pruning
    training = TrainingSpec(
        distill_epochs=3,
        distill_optimizer="adam",
        finetune_optimizer=keras.optimizers.SGD(0.01),
        pivots=["a", "b"],
        output_weight=2.0,
    )
    back = TrainingSpec.from_dict(json.loads(json.dumps(training.to_dict())))
    assert back.replace(finetune_optimizer=None) == training.replace(
        finetune_optimizer=None
    )
    assert back.finetune_optimizer.get_config() == (
        training.finetune_optimizer.get_config()
    )
    assert pruning.replace(macs_reduction=0.5).macs_reduction == 0.5
    with pytest.raises(InvalidArgumentError, match="macs_reduction=2"):
        pruning.replace(macs_reduction=2)
    with pytest.raises(InvalidArgumentError, match="unknown fields \\['target'\\]"):
        PruningSpec.from_dict({"target": 0.5})
    with pytest.raises(ArgumentTypeError, match="scope="):
        PruningSpec(scope=lambda group: True).to_dict()


@pytest.mark.parametrize("criterion", criteria.criterion_names())
def test_needs_data_follows_the_criteria_registry(criterion):
    reads = bool(getattr(criteria.get_criterion(criterion), "statistics", ()))
    assert specs.needs_data(criterion, "shapiro") is reads
    assert specs.needs_data(criterion, "itpruner") is True
    assert PruningSpec(criterion=criterion).needs_data is reads


def test_spec_plan_equals_plan_pruning(cnn):
    spec = PruningSpec(criterion="l1", allocation="target", macs_reduction=0.4)
    expected = hos_keras.plan_pruning(cnn, "l1", "target", macs_reduction=0.4)
    assert spec.plan(cnn) == expected
    data = tiny.images(16, (10, 10, 3), classes=10)
    with pytest.raises(InvalidArgumentError, match="reads calibration data"):
        PruningSpec(criterion="taylor").plan(cnn)
    assert PruningSpec(criterion="taylor", calibration_steps=1).plan(
        cnn, data
    ) == hos_keras.plan_pruning(cnn, "taylor", data=data, calibration_steps=1)


def _tiny_data(n=16, seed=0):
    return tiny.images(n, (10, 10, 3), classes=10, seed=seed)


_QUIET = {
    "latency_batch_sizes": (),
    "tflite_latency": False,
    "recalibration_steps": 0,
    "verbose": 0,
}


def test_compress_driven_by_specs(cnn):
    data = _tiny_data()
    pruning = PruningSpec(criterion="l1", macs_reduction=0.3)
    training = TrainingSpec(
        distill_epochs=1, finetune_epochs=0, batch_size=16, recalibration_steps=0
    )
    slim, report = hos_keras.compress(
        cnn,
        data,
        data,
        pruning=pruning,
        training=training,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    assert report.plan == pruning.plan(cnn)
    assert hos_keras.profile(slim)["macs"] == report.plan.macs_after
    assert len(report.history["distill"]["loss"]) == 1
    with pytest.raises(InvalidArgumentError, match="criterion='taylor'.*the spec"):
        hos_keras.compress(cnn, data, data, pruning=pruning, criterion="taylor")
    with pytest.raises(InvalidArgumentError, match="distill_epochs=3.*the spec"):
        hos_keras.compress(cnn, data, data, training=training, distill_epochs=3)
    with pytest.raises(InvalidArgumentError, match="pruning=0.5"):
        hos_keras.compress(cnn, data, data, pruning=0.5)


@pytest.mark.parametrize(
    "old, new",
    [
        ({"target": 0.3}, {"macs_reduction": 0.3}),
        ({"target": 0.3}, {"pruning": PruningSpec(macs_reduction=0.3)}),
    ],
)
def test_compress_old_target_names_warn_and_plan_the_same(cnn, old, new):
    data = _tiny_data()
    run = {"distill_epochs": 0, "finetune_epochs": 0, "criterion": "l1", **_QUIET}
    if "pruning" in new:
        new = {"pruning": new["pruning"].replace(criterion="l1")}
    with pytest.warns(DeprecationWarning, match="pass macs_reduction=0.3"):
        _, before = hos_keras.compress(cnn, data, data, **old, **run)
    if "pruning" in new:
        run.pop("criterion")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, after = hos_keras.compress(cnn, data, data, **new, **run)
    assert not [w for w in caught if "is deprecated" in str(w.message)]
    assert before.plan == after.plan


def test_compress_target_latency_warns_with_the_new_name(cnn):
    data = _tiny_data()
    with (
        pytest.warns(DeprecationWarning, match="pass latency_reduction=0.5"),
        pytest.raises(InvalidArgumentError, match="approach='prune\\+decompose'"),
    ):
        hos_keras.compress(cnn, data, data, approach="decompose", target_latency=0.5)


def _compiled(model):
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_callback_driven_by_one_spec_per_step_plans_as_the_keywords():
    x, y = _tiny_data(16)
    runs = {}
    for how in ("spec", "keywords"):
        keras.utils.set_random_seed(0)
        model = _compiled(tiny.cnn())
        if how == "spec":
            callback = hos_keras.HOSPruneCallback(
                prune_epochs=[1, 2],
                pruning=[
                    PruningSpec(criterion="l1", macs_reduction=0.2),
                    PruningSpec(criterion="l1", macs_reduction=0.4),
                ],
                verbose=0,
            )
        else:
            callback = hos_keras.HOSPruneCallback(
                prune_epochs=[1, 2],
                criterion="l1",
                allocation="target",
                base="shapiro",
                macs_reduction=[0.2, 0.4],
                verbose=0,
            )
        model.fit(x, y, batch_size=8, epochs=2, callbacks=[callback], verbose=0)
        runs[how] = callback.plan
    assert runs["spec"] == runs["keywords"]
    assert runs["spec"].macs_reduction >= 0.4
    with pytest.raises(InvalidArgumentError, match="which the spec holds"):
        hos_keras.HOSPruneCallback(
            prune_epochs=[1], pruning=PruningSpec(), scope="inner"
        )
    with pytest.raises(InvalidArgumentError, match="one per epoch"):
        hos_keras.HOSPruneCallback(
            prune_epochs=[1, 2, 3], pruning=[PruningSpec(), PruningSpec()]
        )


def _cli(capsys, *argv):
    from hos_keras import cli

    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_spec_file_and_the_deprecated_target_flag(cnn, tmp_path, capsys):
    path = tmp_path / "model.keras"
    cnn.save(path)
    spec = PruningSpec(criterion="l1", macs_reduction=0.4, scope="conv")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec.to_dict()))
    plans = {}
    for name, flags in (
        ("spec", ["--spec", spec_path]),
        ("new", ["--criterion", "l1", "--macs-reduction", "0.4", "--scope", "conv"]),
        ("old", ["--criterion", "l1", "--target", "0.4", "--scope", "conv"]),
    ):
        out = tmp_path / f"{name}.json"
        status, _, err = _cli(
            capsys,
            "prune",
            path,
            *flags,
            "--out",
            tmp_path / f"{name}.keras",
            "--plan",
            out,
        )
        assert status == 0, err
        assert ("--target is deprecated" in err) is (name == "old")
        if name == "old":
            assert "use --macs-reduction 0.4" in err
        plans[name] = hos_keras.PruningPlan.from_json(out.read_text())
    assert plans["spec"] == plans["new"] == plans["old"] == spec.plan(cnn)
    status, _, err = _cli(
        capsys,
        "prune",
        path,
        "--spec",
        spec_path,
        "--criterion",
        "l2",
        "--out",
        tmp_path / "x.keras",
    )
    assert status == 1 and "drop the flags that set ['criterion']" in err


def test_tuner_hypermodel_driven_by_specs_and_the_renamed_budgets():
    import keras_tuner

    from hos_keras.tuner import HOSHyperModel

    base = tiny.chain((16, 16, 16), input_shape=(12, 12, 3), head="logits")
    hypermodel = HOSHyperModel(
        base,
        pruning=PruningSpec(criterion="l1", macs_reduction=0.3, scope="conv"),
        training=TrainingSpec(distill_epochs=1, finetune_epochs=0),
        coefficient=(1.0, 4.0),
    )
    hp = keras_tuner.HyperParameters()
    distiller = hypermodel.build(hp)
    assert hp.values["criterion"] == "l1" and hp.values["allocation"] == "shapiro"
    assert hypermodel.finetune_epochs == 0
    expected = hos_keras.plan_pruning(
        base, "l1", "shapiro", coefficient=hp.values["coefficient"], scope="conv"
    )
    assert hypermodel.plan(hp) == expected
    assert distiller.student.count_params() < base.count_params()
    with pytest.warns(DeprecationWarning, match="pass macs_reduction=0.3"):
        old = HOSHyperModel(base, target_reduction=0.3, coefficient=(1.0, 4.0))
    new = HOSHyperModel(base, macs_reduction=0.3, coefficient=(1.0, 4.0))
    assert old.macs_budget == new.macs_budget == hypermodel.macs_budget
    fixed = {"criterion": "k34", "coefficient": 2.0}
    hp_old, hp_new = keras_tuner.HyperParameters(), keras_tuner.HyperParameters()
    for hp_ in (hp_old, hp_new):
        for key, value in fixed.items():
            hp_.Fixed(key, value)
    assert old.plan(hp_old) == new.plan(hp_new)
    with (
        pytest.warns(DeprecationWarning, match="pass latency_reduction=0.5"),
        pytest.raises(InvalidArgumentError, match="pass exactly one"),
    ):
        HOSHyperModel(base, target_latency=0.5, macs_reduction=0.3)
    with pytest.raises(InvalidArgumentError, match="which the spec holds"):
        HOSHyperModel(base, pruning=PruningSpec(macs_reduction=0.3), scope="conv")
