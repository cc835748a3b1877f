"""Latency targets: the planner against hand-made latency tables (no timing)."""

import itertools
import json

import keras
import numpy as np
import pytest
from keras import layers

import hos_keras
from hos_keras import latency
from hos_keras.errors import InvalidArgumentError, UnreachableTargetError


def _cnn():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = layers.ReLU()(x)
    x = layers.Conv2D(16, 3, padding="same", name="c2")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(12, 3, padding="same", name="c3")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, name="out")(x), name="cnn")


def _table(coef, base_ms=10.0, merges=None, per_element_ms=0.0):
    """A latency model with given coefficients for c1..c3 and the Dense."""
    widths = {"c1": (3, 8), "c2": (8, 16), "c3": (16, 12), "out": (12, 4)}
    return latency.LatencyModel(
        key="fake",
        runtime="tflite",
        batch_size=1,
        threads=2,
        base_ms=base_ms,
        layers={
            name: {"c_in": ci, "c_out": co, "passes": 0, "coef": list(coef[name])}
            for name, (ci, co) in widths.items()
        },
        merges=merges or {},
        per_element_ms=per_element_ms,
    )


def test_prediction_is_measured_time_minus_what_layers_save():
    table = _table(
        {
            "c1": (0.1, 0.0, 0.0, 0.05),
            "c2": (0.2, 0.01, 0.0, 0.0),
            "c3": (0.1, 0.005, 0.01, 0.0),
            "out": (0.0, 0.0, 0.0, 0.0),
        },
        merges={"add": {"elements": 64, "channels": 16}},
        per_element_ms=0.001,
    )
    predicted = table.predict({"c2": 4, "c3": 8}, {"c1": 4, "c2": 8}, {"add": 8})
    saved = (
        0.05 * (8 - 4)  # c1: 8 -> 4 outputs
        + 0.01 * (8 * 16 - 4 * 8)  # c2: (8, 16) -> (4, 8)
        + 0.005 * (16 * 12 - 8 * 12)
        + 0.01 * (16 - 8)  # c3: 16 -> 8 inputs
        + 0.001 * 64 * (16 - 8)  # the merge: 16 -> 8 channels
    )
    assert predicted == pytest.approx(10.0 - saved)
    assert table.predict() == 10.0


def test_calibration_maps_raw_savings_through_the_measured_copies():
    table = _table({n: (0.0, 0.0, 0.0, 0.0) for n in ("c1", "c2", "c3", "out")})
    table.scale = 0.5
    table.calibration = [
        {"ratio": 0.25, "measured_ms": 9.5, "raw_saved_ms": 2.0},
        {"ratio": 0.5, "measured_ms": 6.0, "raw_saved_ms": 4.0},
    ]
    # Through (0, 0), (2, 0.5), (4, 4); beyond the last point, slope `scale`.
    assert table.calibrated(1.0) == pytest.approx(0.25)
    assert table.calibrated(3.0) == pytest.approx(2.25)
    assert table.calibrated(6.0) == pytest.approx(4.0 + 0.5 * 2.0)
    # Measured savings that shrink with more pruning are made monotone.
    table.calibration[1]["measured_ms"] = 9.8
    assert table.calibrated(4.0) == pytest.approx(0.5)


def test_latency_target_prunes_where_time_goes(monkeypatch):
    model = _cnn()
    timed = []

    def fake_time(models, runtime, batch_size, threads, runs):
        timed.append([m.count_params() for m in models])
        return [9.0, 5.4]

    monkeypatch.setattr(latency, "_time_models", fake_time)
    # All the time is in c2's outputs (c2 and c3's inputs cost nothing).
    table = _table(
        {
            "c1": (0.0, 0.0, 0.0, 0.0),
            "c2": (1.0, 0.0, 0.0, 0.5),
            "c3": (0.0, 0.0, 0.0, 0.0),
            "out": (0.0, 0.0, 0.0, 0.0),
        },
        base_ms=9.0,
    )
    plan = hos_keras.plan_pruning(
        model,
        criterion="l1",
        allocation="target",
        base="fixed",
        latency_reduction=0.4,
        latency_model=table,
    )
    # Predicted ms = 9 - 0.5 * (16 - kept c2): the least uniform ratio that saves
    # 40% (3.6 ms) keeps floor(16 * (1 - r)) <= 8.8, i.e. 8 channels of c2.
    assert len(plan.groups["c2"].keep) == 8
    info = plan.details["latency"]
    assert info["original_ms"] == 9.0
    assert info["predicted_ms"] == pytest.approx(9.0 - 0.5 * 8)
    assert info["predicted_speedup"] == pytest.approx(9.0 / 5.0)
    # The slim model was built and timed beside the original (the fake timer).
    assert timed == [[model.count_params(), plan.params_after]]
    assert info["measured_original_ms"] == 9.0 and info["measured_slim_ms"] == 5.4
    assert info["measured_speedup"] == pytest.approx(9.0 / 5.4)
    assert len(info["rounds"]) == 1  # 40% measured: met, no correction
    assert plan.details["requested_latency_reduction"] == 0.4
    assert plan.details["predicted_latency_reduction"] >= 0.4
    assert plan.allocation_config["latency_reduction"] == 0.4
    assert hos_keras.PruningPlan.from_json(plan.to_json()) == plan


def _hand_latency_reduction(plan, coef, base_ms):
    """The latency reduction `_table(coef, base_ms)` predicts for a plan of `_cnn`,
    computed by hand: each layer's `a + b c_in c_out + c c_in + d c_out` at the
    widths the plan keeps, against the same at full widths."""
    kept = {n: len(g.keep) for n, g in plan.groups.items()}
    k1, k2, k3 = (kept.get(n, w) for n, w in (("c1", 8), ("c2", 16), ("c3", 12)))

    def ms(widths):
        return sum(
            a + b * ci * co + c * ci + d * co
            for (a, b, c, d), (ci, co) in zip(
                (coef[n] for n in ("c1", "c2", "c3", "out")), widths, strict=True
            )
        )

    full = ms([(3, 8), (8, 16), (16, 12), (12, 4)])
    slim = ms([(3, k1), (k1, k2), (k2, k3), (k3, 4)])
    return (full - slim) / base_ms


@pytest.mark.parametrize("base", ["shapiro", "global"])
def test_latency_target_search_is_minimal_for_every_base(base):
    """The plan meets the target by the hand-computed prediction, and the base
    allocation's next setting towards less pruning does not: no over-pruning."""
    keras.utils.set_random_seed(0)  # the scores decide which plans tie
    model = _cnn()
    coef = {name: (0.1, 0.002, 0.01, 0.02) for name in ("c1", "c2", "c3", "out")}
    target = 0.2
    plan = hos_keras.plan_pruning(
        model,
        criterion="l1",
        allocation="target",
        base=base,
        latency_reduction=target,
        latency_model=_table(coef, base_ms=2.0),
        verify_latency=False,
    )
    assert "measured_slim_ms" not in plan.details["latency"]
    achieved = _hand_latency_reduction(plan, coef, 2.0)
    assert achieved >= target - 1e-12  # sums of floats: 0.19999999999999996
    assert plan.details["predicted_latency_reduction"] == pytest.approx(achieved)
    # One step less pruning misses: the least pruning that reaches the target.
    if base == "shapiro":  # larger coefficients prune less
        coefficient = plan.details["coefficient"]
        assert coefficient < 1e3, "the search ended on its bound: pick another target"
        less = {"coefficient": coefficient * (1 + 1e-6)}
    else:
        total = sum(g.channels for g in plan.groups.values())
        removed = round(plan.details["fraction"] * total)
        less = {"fraction": (removed - 1) / total}
    lighter = hos_keras.plan_pruning(model, criterion="l1", allocation=base, **less)
    assert sum(len(g.keep) for g in lighter.groups.values()) > sum(
        len(g.keep) for g in plan.groups.values()
    )
    assert _hand_latency_reduction(lighter, coef, 2.0) < target


def test_unreachable_latency_target_says_what_is_reachable():
    table = _table({n: (0.1, 0.0, 0.0, 0.0) for n in ("c1", "c2", "c3", "out")})
    with pytest.raises(
        UnreachableTargetError, match="latency_reduction=0.5.*0.0%"
    ) as caught:
        hos_keras.plan_pruning(
            _cnn(),
            allocation="target",
            base="fixed",
            latency_reduction=0.5,
            latency_model=table,
            verify_latency=False,
        )
    assert isinstance(caught.value, InvalidArgumentError)


def test_both_targets_or_bad_runtime_are_refused():
    with pytest.raises(InvalidArgumentError, match="pass one target"):
        hos_keras.get_allocation("target", macs_reduction=0.5, latency_reduction=0.5)
    with pytest.raises(InvalidArgumentError, match="latency_reduction=1.5"):
        hos_keras.get_allocation("target", latency_reduction=1.5)
    with pytest.raises(InvalidArgumentError, match="runtime='gpu'"):
        latency.build_latency_model(_cnn(), "gpu")


def test_latency_model_json_and_cache(tmp_path, monkeypatch):
    model = _cnn()
    key = latency._key(model, "tflite", 1, 2)
    table = _table({n: (0.1, 0.0, 0.0, 0.0) for n in ("c1", "c2", "c3", "out")})
    table.key = key
    assert latency.LatencyModel.from_json(table.to_json()) == table
    (tmp_path / f"{key}.json").write_text(table.to_json())

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached latency model must not be measured again")

    monkeypatch.setattr(latency, "_time_models", no_timing)
    assert latency.build_latency_model(model, cache_dir=tmp_path) == table
    with pytest.raises(
        InvalidArgumentError, match="Pass the text LatencyModel.to_json"
    ):
        latency.LatencyModel.from_json(json.dumps({"format": "other"}))


def test_build_measures_every_weight_layer_once_per_signature(tmp_path, monkeypatch):
    """The structure of a real build, with the timer replaced by a MACs count."""
    model = _cnn()
    seen = []

    def fake_time(models, runtime, batch_size, threads, runs):
        seen.extend(models)
        return [float(hos_keras.profile(m)["macs"]) * 1e-6 + 0.01 for m in models]

    monkeypatch.setattr(latency, "_time_models", fake_time)
    table = latency.build_latency_model(model, cache_dir=tmp_path)
    assert set(table.layers) == {"c1", "c2", "c3", "out"}
    # c1 reads the model input: only its outputs vary; c2, c3 vary both ways.
    c1_variants = [m for m in seen[1:] if m.layers[-1].name == "c1"]
    assert {m.inputs[0].shape[-1] for m in c1_variants} == {3}
    assert {m.outputs[0].shape[-1] for m in c1_variants} == {8, 4, 2}
    # A fit of MACs-proportional times predicts MACs exactly.
    macs = hos_keras.profile(model)["layers"]["c2"]["macs"]
    assert table.layer_ms("c2", 8, 16) == pytest.approx(macs * 1e-6 + 0.01, rel=1e-6)
    assert table.layer_ms("c2", 4, 8) == pytest.approx(macs / 4 * 1e-6 + 0.01, rel=1e-6)
    assert (tmp_path / f"{table.key}.json").exists()
    assert np.isfinite(table.base_ms)


# Every entry point, on a latency model built by the real code with a fake timer
# whose "milliseconds" are the models' MACs: deterministic, no timing.


def _macs_timer(models, runtime, batch_size, threads, runs):
    return [hos_keras.profile(m)["macs"] * 1e-6 + 0.001 for m in models]


@pytest.fixture
def macs_timer(monkeypatch, tmp_path):
    monkeypatch.setattr(latency, "_time_models", _macs_timer)
    monkeypatch.setenv("HOS_KERAS_CACHE", str(tmp_path / "cache"))


def test_macs_timer_model_predicts_the_macs_of_any_plan(macs_timer):
    model = _cnn()
    table = latency.build_latency_model(model)
    assert table.tile == 1 and table.scale == pytest.approx(1.0, rel=1e-3)
    plan = hos_keras.plan_pruning(
        model,
        criterion="l1",
        allocation="fixed",
        ratio=0.4,
        latency_model=table,
    )
    info = plan.details["latency"]
    # Times are MACs here, so the prediction of the pruned model is its MACs.
    assert info["predicted_ms"] == pytest.approx(info["measured_slim_ms"], rel=1e-3)
    assert info["measured_slim_ms"] == pytest.approx(plan.macs_after * 1e-6 + 0.001)


def test_a_measured_miss_is_corrected_by_planning_again(macs_timer, monkeypatch):
    model = _cnn()
    table = latency.build_latency_model(model)  # predicts MACs exactly

    def slow_runtime(models, runtime, batch_size, threads, runs):
        # The runtime pays 0.02 "ms" per model on top of its MACs: the table
        # over-predicts every speed-up, so plans miss their target.
        return [t + 0.02 for t in _macs_timer(models, runtime, batch_size, threads, 1)]

    monkeypatch.setattr(latency, "_time_models", slow_runtime)
    options = {
        "criterion": "l1",
        "allocation": "target",
        "base": "fixed",
        "latency_reduction": 0.5,
        "latency_model": table,
    }
    trusted = hos_keras.plan_pruning(model, latency_corrections=0, **options)
    first = trusted.details["latency"]
    assert first["measured_speedup"] < 1.98 < first["predicted_speedup"]
    plan = hos_keras.plan_pruning(model, **options)
    rounds = plan.details["latency"]["rounds"]
    assert rounds[0]["asked_latency_reduction"] == 0.5
    assert rounds[0]["measured_speedup"] == pytest.approx(first["measured_speedup"])
    # Each retry asks for the measured shortfall more, as many times as it takes
    # the widths to change (the uniform ratio moves in steps on so small a model).
    for before, after in itertools.pairwise(rounds):
        shortfall = 0.5 - (1 - 1 / before["measured_speedup"])
        steps = (
            after["asked_latency_reduction"] - before["asked_latency_reduction"]
        ) / shortfall
        assert steps == pytest.approx(round(steps)) and round(steps) >= 1
        assert after["predicted_speedup"] > before["predicted_speedup"]
    assert 2 <= len(rounds) <= 3
    assert plan.details["latency"]["measured_speedup"] >= 1 / (1 - 0.49)
    assert plan.details["requested_latency_reduction"] == 0.5
    assert plan.macs_after < trusted.macs_after


def test_an_overshoot_is_corrected_and_the_least_pruned_plan_kept(
    macs_timer, monkeypatch
):
    model = _cnn()
    table = latency.build_latency_model(model)

    def fast_runtime(models, runtime, batch_size, threads, runs):
        # The runtime runs every pruned model at 70% of its MACs' time: the table
        # under-predicts the speed-ups, so plans prune more than asked.
        original, *slims = _macs_timer(models, runtime, batch_size, threads, 1)
        return [original, *(0.7 * t for t in slims)]

    monkeypatch.setattr(latency, "_time_models", fast_runtime)
    options = {
        "criterion": "l1",
        "allocation": "target",
        "base": "fixed",
        "latency_reduction": 0.4,
        "latency_model": table,
    }
    trusted = hos_keras.plan_pruning(model, latency_corrections=0, **options)
    assert trusted.details["latency"]["measured_speedup"] > 1 / (1 - 0.45)
    plan = hos_keras.plan_pruning(model, **options)
    rounds = plan.details["latency"]["rounds"]
    assert rounds[1]["asked_latency_reduction"] < 0.4
    measured = plan.details["latency"]["measured_speedup"]
    assert measured >= 1 / (1 - 0.39)
    # The least pruned of the measured plans that met the target is returned.
    met = [r["measured_speedup"] for r in rounds if r["measured_speedup"] >= 1 / 0.61]
    assert measured == pytest.approx(min(met))
    assert plan.macs_after > trusted.macs_after


def _fixed_cost_runtime(share):
    """A runtime whose every model pays `share` of the first model's MACs time
    on top of its own: latency falls slower than MACs, as on small networks."""

    def runtime(models, runtime, batch_size, threads, runs):
        times = _macs_timer(models, runtime, batch_size, threads, 1)
        return [t + share * times[0] for t in times]

    return runtime


def test_a_target_the_model_calls_unreachable_is_found_by_measuring(
    macs_timer, monkeypatch
):
    model = _cnn()
    # A latency model that sees no saving anywhere: every target is unreachable.
    table = _table({n: (0.1, 0.0, 0.0, 0.0) for n in ("c1", "c2", "c3", "out")})
    monkeypatch.setattr(latency, "_time_models", _fixed_cost_runtime(0.3))
    plan = hos_keras.plan_pruning(
        model,
        criterion="l1",
        allocation="target",
        base="global",
        latency_reduction=0.5,
        latency_model=table,
    )
    info = plan.details["latency"]
    rounds = info["rounds"]
    assert info["met"] and {r["search"] for r in rounds} == {"measured"}
    # The first guess is the target itself, as a MACs reduction.
    assert rounds[0]["asked_macs_reduction"] == 0.5
    assert rounds[0]["measured_speedup"] < 1 / 0.51
    # Time here is MACs plus 0.3 of the original's: a latency reduction r needs a
    # MACs reduction of 1.3 r, i.e. 0.65 for 2x.
    macs = hos_keras.profile(model)["macs"] * 1e-6
    expected = (macs + 0.001 + 0.3 * (macs + 0.001)) / (
        (macs - plan.macs_reduction * macs) + 0.001 + 0.3 * (macs + 0.001)
    )
    assert info["measured_speedup"] == pytest.approx(expected, rel=1e-6)
    assert info["measured_speedup"] >= 1 / 0.51
    assert plan.macs_reduction >= 0.64
    assert len(rounds) <= 5
    # The least pruned plan that met the target is the one returned.
    met = [r for r in rounds if r["measured_speedup"] >= 1 / 0.51]
    assert plan.macs_reduction == pytest.approx(min(r["macs_reduction"] for r in met))
    # Without measuring, the model's verdict stands.
    with pytest.raises(UnreachableTargetError):
        hos_keras.plan_pruning(
            model,
            criterion="l1",
            allocation="target",
            base="global",
            latency_reduction=0.5,
            latency_model=table,
            latency_corrections=0,
        )


def test_a_target_no_plan_reaches_returns_the_fastest_and_says_so(
    macs_timer, monkeypatch
):
    table = _table({n: (0.1, 0.0, 0.0, 0.0) for n in ("c1", "c2", "c3", "out")})
    # A fixed cost of 1.5x the original's MACs: no pruning reaches 2x.
    monkeypatch.setattr(latency, "_time_models", _fixed_cost_runtime(1.5))
    plan = hos_keras.plan_pruning(
        _cnn(),
        criterion="l1",
        allocation="target",
        base="global",
        latency_reduction=0.5,
        latency_model=table,
        latency_corrections=3,
    )
    info = plan.details["latency"]
    assert not info["met"] and len(info["rounds"]) == 4
    fastest = max(r["measured_speedup"] for r in info["rounds"])
    assert info["measured_speedup"] == fastest < 2.0
    # Each guess beyond the measured plans asks for more MACs reduction.
    asked = [r["asked_macs_reduction"] for r in info["rounds"]]
    assert asked == sorted(asked) and len(set(asked)) == 4


def test_compress_with_a_latency_target(macs_timer):
    model = _cnn()
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 4
    _, report = hos_keras.compress(
        model,
        (x, y),
        (x, y),
        target_latency=0.3,
        allocation="fixed",
        distill_epochs=0,
        finetune_epochs=0,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    info = report.plan.details["latency"]
    assert 1 - info["predicted_ms"] / info["original_ms"] >= 0.3
    assert report.plan.allocation_config["latency_reduction"] == 0.3
    with pytest.raises(InvalidArgumentError, match="not both"):
        hos_keras.compress(
            model, (x, y), (x, y), macs_reduction=0.3, latency_reduction=0.3
        )


def test_callback_with_progressive_latency_targets(macs_timer):
    model = _cnn()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[1, 2],
        criterion="l1",
        allocation="target",
        base="fixed",
        latency_reduction=[0.2, 0.4],
        verbose=0,
    )
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    model.fit(x, np.arange(8) % 4, epochs=2, callbacks=[callback], verbose=0)
    info = callback.plan.details["latency"]
    assert 1 - info["predicted_ms"] / info["original_ms"] >= 0.4
    assert "measured_slim_ms" not in info  # not re-timed at every step


def test_cli_prune_with_a_latency_target(macs_timer, tmp_path, capsys):
    from hos_keras import cli

    path = tmp_path / "model.keras"
    _cnn().save(path)
    status = cli.main(
        [
            "prune",
            str(path),
            "--allocation",
            "fixed",
            "--latency-target",
            "0.3",
            "--round-to",
            "auto",
            "--out",
            str(tmp_path / "slim.keras"),
            "--plan",
            str(tmp_path / "plan.json"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "latency on tflite:" in out and "measured" in out
    plan = hos_keras.PruningPlan.from_json((tmp_path / "plan.json").read_text())
    assert plan.details["latency"]["measured_speedup"] >= 1 / 0.7 - 1e-6
    status = cli.main(
        [
            "prune",
            str(path),
            "--target",
            "0.3",
            "--latency-target",
            "0.3",
            "--out",
            str(tmp_path / "x.keras"),
        ]
    )
    assert status == 1
    assert "exclude each other" in capsys.readouterr().err


def test_tuner_latency_budget(macs_timer):
    import keras_tuner

    from hos_keras.tuner import HOSHyperModel

    model = _cnn()
    hypermodel = HOSHyperModel(model, target_latency=0.3, coefficient=(0.5, 2.0))
    hp = keras_tuner.HyperParameters()
    plan = hypermodel.plan(hp)
    cost = hypermodel._cost(plan)
    assert cost == plan.details["latency"]["predicted_ms"]
    budget = hypermodel.latency_model.base_ms * 0.7
    expected = 0.9 if cost <= budget else -(cost - budget) / budget
    assert hypermodel.score(cost, 0.9) == pytest.approx(expected)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        HOSHyperModel(model, target_reduction=0.3, target_latency=0.3)


# allocation="itpruner" with a latency target: the MACs budget is bisected.


def _calibration():
    x = np.random.default_rng(3).normal(size=(16, 8, 8, 3)).astype("float32")
    return x, np.arange(16) % 4


def test_itpruner_latency_target_is_the_smallest_budget_that_meets_it():
    model, data = _cnn(), _calibration()
    zero = (0.0, 0.0, 0.0, 0.0)
    # All of the time that pruning can save is c2's c_in * c_out term.
    table = _table({"c1": zero, "c2": (0.1, 0.02, 0.0, 0.0), "c3": zero, "out": zero})
    table.base_ms = 4.0

    def predicted_reduction(plan):
        saved = 0.02 * (8 * 16 - len(plan["c1"].keep) * len(plan["c2"].keep))
        return saved / 4.0

    options = {"latency_model": table, "verify_latency": False, "data": data}
    plan = hos_keras.plan_pruning(
        model, "l1", "itpruner", latency_reduction=0.3, **options
    )
    info = plan.details["latency"]
    assert 1 - info["predicted_ms"] / 4.0 == pytest.approx(predicted_reduction(plan))
    assert predicted_reduction(plan) >= 0.3
    assert plan.details["predicted_latency_reduction"] >= 0.3
    budget = plan.details["macs_reduction_target"]
    same = hos_keras.plan_pruning(
        model, "l1", "itpruner", macs_reduction=budget, **options
    )
    assert {n: len(g.keep) for n, g in same.groups.items()} == {
        n: len(g.keep) for n, g in plan.groups.items()
    }
    # One percent less budget no longer meets the target: the budget is minimal.
    less = hos_keras.plan_pruning(
        model, "l1", "itpruner", macs_reduction=budget - 0.01, **options
    )
    assert predicted_reduction(less) < 0.3
    assert plan.allocation_config["latency_reduction"] == 0.3
    with pytest.raises(UnreachableTargetError, match="predicted latency"):
        hos_keras.plan_pruning(
            model, "l1", "itpruner", latency_reduction=0.8, **options
        )
    with pytest.raises(InvalidArgumentError, match="pass one target"):
        hos_keras.get_allocation("itpruner", macs_reduction=0.3, latency_reduction=0.3)


def test_itpruner_latency_target_is_measured_and_corrected(macs_timer, monkeypatch):
    model, data = _cnn(), _calibration()
    table = latency.build_latency_model(model)  # predicts MACs exactly
    monkeypatch.setattr(latency, "_time_models", _fixed_cost_runtime(0.3))
    plan = hos_keras.plan_pruning(
        model, "l1", "itpruner", latency_reduction=0.4, data=data, latency_model=table
    )
    info = plan.details["latency"]
    # The fixed cost makes the model's first plan miss; the planner re-plans
    # ITPruner itself (asking more latency, then searching its MACs budget).
    assert info["rounds"][0]["measured_speedup"] < 1 / 0.61
    assert len(info["rounds"]) >= 2 and info["met"]
    assert info["measured_speedup"] >= 1 / 0.61
    assert plan.allocation == "itpruner"


def test_itpruner_latency_target_from_every_entry_point(macs_timer, tmp_path, capsys):
    import keras_tuner

    from hos_keras import cli
    from hos_keras.tuner import HOSHyperModel

    model, (x, y) = _cnn(), _calibration()
    _, report = hos_keras.compress(
        model,
        (x, y),
        (x, y),
        criterion="l1",
        allocation="itpruner",
        target_latency=0.3,
        calibration_steps=1,
        distill_epochs=0,
        finetune_epochs=0,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    assert report.plan.allocation_config["latency_reduction"] == 0.3
    assert report.plan.details["latency"]["measured_speedup"] >= 1 / 0.71

    path, calibration = tmp_path / "model.keras", tmp_path / "cal.npz"
    model.save(path)
    np.savez(calibration, x=x, y=y)
    flags = ["--allocation", "itpruner", "--latency-target", "0.3"]
    status = cli.main(
        ["prune", str(path), *flags, "--data", str(calibration), "--criterion", "l1"]
        + ["--out", str(tmp_path / "s.keras"), "--plan", str(tmp_path / "p.json")]
    )
    assert status == 0, capsys.readouterr().err
    written = hos_keras.PruningPlan.from_json((tmp_path / "p.json").read_text())
    assert written.allocation_config["latency_reduction"] == 0.3
    assert written.details["latency"]["measured_speedup"] >= 1 / 0.71

    hypermodel = HOSHyperModel(
        model,
        target_latency=0.3,
        allocation="itpruner",
        criterion="l1",
        calibration_data=(x, y),
    )
    hp = keras_tuner.HyperParameters()
    hp.Fixed("beta", 2.0)
    plan = hypermodel.plan(hp)
    assert plan.allocation_config["latency_reduction"] == pytest.approx(0.3)
    assert hypermodel._cost(plan) <= hypermodel.latency_model.base_ms * 0.7 + 1e-9

    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[1, 2],
        criterion="l1",
        allocation="itpruner",
        latency_reduction=[0.2, 0.4],
        data=(x, y),
        verbose=0,
    )
    model.fit(x, y, epochs=2, callbacks=[callback], verbose=0)
    info = callback.plan.details["latency"]
    assert 1 - info["predicted_ms"] / info["original_ms"] >= 0.4


def _transformer_block():
    """Self-attention (4 heads) and a GELU MLP on sequences of 6 tokens."""
    inputs = keras.Input((6, 16))
    x = layers.MultiHeadAttention(4, 8, name="attention")(inputs, inputs)
    x = layers.Add()([inputs, x])
    h = layers.Dense(32, activation="gelu", name="mlp_up")(x)
    x = layers.Add()([x, layers.Dense(16, name="mlp_down")(h)])
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(3, name="out")(x), name="block")


def test_latency_model_covers_attention_heads_and_mlp_widths(macs_timer):
    model = _transformer_block()
    table = latency.build_latency_model(model)
    # The attention layer is timed in heads: 4 of them, the copies called on
    # query and value as the layer was.
    assert (table.layers["attention"]["c_in"], table.layers["attention"]["c_out"]) == (
        16,
        4,
    )
    plan = hos_keras.plan_pruning(
        model, criterion="l1", allocation="fixed", ratio=0.5, latency_model=table
    )
    assert len(plan["attention"].keep) == 2 and len(plan["mlp_up"].keep) == 16
    info = plan.details["latency"]
    # Times are MACs: predicting the slim model's time needs the heads removed.
    assert info["measured_slim_ms"] == pytest.approx(plan.macs_after * 1e-6 + 0.001)
    assert info["predicted_ms"] == pytest.approx(info["measured_slim_ms"], rel=1e-3)
