"""The hos-keras command: outputs checked against the library and scipy."""

import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from invariants import assert_equivalent, different_plan, outputs, swapped_channels
from keras import layers

import hos_keras
from hos_keras import cli


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(12, 3, padding="same", name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU()(x)
    r = layers.Conv2D(10, 3, padding="same", activation="relu", name="inner")(x)
    r = layers.Conv2D(12, 3, padding="same", name="back")(r)
    x = layers.Add()([x, r])
    x = layers.Conv2D(16, 3, strides=2, activation="relu", name="wide")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    model = _model()
    path = directory / "model.keras"
    model.save(path)
    return model, path, directory


def _run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _rows(text, first_column):
    """Table rows (split on whitespace) whose first cell is in first_column."""
    return {
        line.split()[0]: line.split()
        for line in text.splitlines()
        if line.split() and line.split()[0] in first_column
    }


def _x(n=3):
    return np.random.default_rng(7).normal(size=(n, 12, 12, 3)).astype("float32")


def test_profile_prints_the_library_counts(saved, capsys):
    model, path, _ = saved
    status, out, err = _run(capsys, "profile", path, "--layers")
    assert status == 0, err
    cost = hos_keras.profile(model)
    assert f"params: {cost['params']:,}" in out
    assert f"MACs:   {cost['macs']:,}" in out
    rows = _rows(out, cost["layers"])
    assert set(rows) == set(cost["layers"])
    for name, entry in cost["layers"].items():
        assert rows[name][-2:] == [f"{entry['params']:,}", f"{entry['macs']:,}"]


def test_report_statistics_match_scipy_and_the_plan(saved, capsys):
    model, path, _ = saved
    status, out, err = _run(capsys, "report", path, "--macs-reduction", "0.4")
    assert status == 0, err
    plan = hos_keras.plan_pruning(
        model, "k34", "target", macs_reduction=0.4, base="shapiro"
    )
    rows = _rows(out, plan.groups)
    assert set(rows) == set(plan.groups)
    for name in ("inner", "wide"):
        kernel = model.get_layer(name).get_weights()[0]
        w = scipy.stats.shapiro(kernel.ravel().astype("float64")).statistic
        assert float(rows[name][2]) == pytest.approx(w, abs=1e-4)
    for name, group in plan.groups.items():
        assert float(rows[name][-2]) == pytest.approx(group.ratio, abs=1e-3)
        assert int(rows[name][-1]) == len(group.keep)
    assert "logits: its channels reach a model output" in out


def test_prune_writes_a_slim_model_equal_to_the_masked_one(saved, capsys):
    model, path, directory = saved
    out_path, plan_path = directory / "slim.keras", directory / "plan.json"
    status, out, err = _run(
        capsys,
        "prune",
        path,
        "--criterion",
        "abs_k34",
        "--macs-reduction",
        "0.4",
        "--out",
        out_path,
        "--plan",
        plan_path,
    )
    assert status == 0, err
    plan = hos_keras.PruningPlan.from_json(plan_path.read_text())
    expected = hos_keras.plan_pruning(
        model, "abs_k34", "target", macs_reduction=0.4, base="shapiro"
    )
    assert plan == expected
    slim = keras.models.load_model(out_path)
    masked = hos_keras.mask_model(model, plan)
    decoy = hos_keras.mask_model(model, different_plan(plan))
    assert_equivalent(
        outputs(masked, _x()),
        outputs(slim, _x()),
        decoys=[outputs(decoy, _x())],
        name="the slim model hos-keras prune wrote",
    )
    assert hos_keras.profile(slim)["macs"] <= 0.6 * hos_keras.profile(model)["macs"]
    assert f"slim model written to {out_path}" in out

    again = directory / "again.keras"
    status, _, err = _run(
        capsys, "prune", path, "--from-plan", plan_path, "--out", again
    )
    assert status == 0, err
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.models.load_model(again)(_x())),
        keras.ops.convert_to_numpy(slim(_x())),
    )


def test_prune_with_fixed_and_global_allocations(saved, capsys):
    model, path, directory = saved
    for flags, allocation, options in (
        (["--allocation", "fixed", "--ratio", "0.5"], "fixed", {"ratio": 0.5}),
        (["--allocation", "global", "--fraction", "0.3"], "global", {"fraction": 0.3}),
        (["--allocation", "k34", "-c", "2.0"], "k34", {"coefficient": 2.0}),
        (
            ["--allocation", "fixed", "--ratio", "0.5", "--scope", "inner"],
            "fixed",
            {"ratio": 0.5, "scope": "inner"},
        ),
        (
            ["--allocation", "fixed", "--ratio", "0.5", "--skip", "inn*", "wide"],
            "fixed",
            {"ratio": 0.5, "skip": ["inn*", "wide"]},
        ),
    ):
        plan_path = directory / f"{allocation}_{len(flags)}.json"
        status, _, err = _run(
            capsys,
            "prune",
            path,
            *flags,
            "--out",
            directory / f"{allocation}.keras",
            "--plan",
            plan_path,
        )
        assert status == 0, err
        expected = hos_keras.plan_pruning(model, "k34", allocation, **options)
        written = hos_keras.PruningPlan.from_json(plan_path.read_text())
        assert written == expected
        if "scope" in options:
            assert [len(written[n].keep) for n in ("stem", "inner", "wide")] == [
                12,
                5,
                8,
            ]
        if "skip" in options:
            assert [len(written[n].keep) for n in ("stem", "inner", "wide")] == [
                6,
                10,
                16,
            ]


@pytest.mark.parametrize("criterion", ["fpgm", "lamp", "bn_scale"])
def test_prune_with_the_other_weight_criteria(saved, capsys, criterion):
    model, path, directory = saved
    plan_path = directory / f"{criterion}.json"
    status, _, err = _run(
        capsys,
        "prune",
        path,
        "--criterion",
        criterion,
        "--allocation",
        "fixed",
        "--ratio",
        "0.5",
        "--out",
        directory / f"{criterion}.keras",
        "--plan",
        plan_path,
    )
    assert status == 0, err
    written = hos_keras.PruningPlan.from_json(plan_path.read_text())
    assert written == hos_keras.plan_pruning(model, criterion, "fixed", ratio=0.5)
    assert written.criterion == criterion


def test_prune_with_a_data_criterion_reads_the_calibration_file(saved, capsys):
    model, path, directory = saved
    x, y = _x(10), np.arange(10) % 2
    calibration = directory / "calibration.npz"
    np.savez(calibration, x=x, y=y)
    flags = ["--allocation", "fixed", "--ratio", "0.5", "--criterion", "taylor"]
    plan_path = directory / "taylor.json"
    status, _, err = _run(
        capsys,
        "prune",
        path,
        *flags,
        "--data",
        calibration,
        "--calibration-steps",
        "1",
        "--out",
        directory / "taylor.keras",
        "--plan",
        plan_path,
    )
    assert status == 0, err
    written = hos_keras.PruningPlan.from_json(plan_path.read_text())
    expected = hos_keras.plan_pruning(
        model, "taylor", "fixed", ratio=0.5, data=(x, y), calibration_steps=1
    )
    assert written == expected
    # ITPruner reads the same file; --macs-reduction is its MACs reduction.
    itpruner = [
        "--allocation",
        "itpruner",
        "--macs-reduction",
        "0.4",
        "--data",
        calibration,
    ]
    status, _, err = _run(
        capsys,
        "prune",
        path,
        *itpruner,
        "--out",
        directory / "it.keras",
        "--plan",
        plan_path,
    )
    assert status == 0, err
    written = hos_keras.PruningPlan.from_json(plan_path.read_text())
    assert written == hos_keras.plan_pruning(
        model, "k34", "itpruner", macs_reduction=0.4, data=(x, y)
    )
    assert written.macs_reduction >= 0.4
    out = directory / "x.keras"
    status, _, err = _run(capsys, "prune", path, *flags, "--out", out)
    assert status == 1 and "data=None" in err
    np.savez(directory / "bad.npz", inputs=x)
    status, _, err = _run(
        capsys, "prune", path, *flags, "--data", directory / "bad.npz", "--out", out
    )
    assert status == 1 and "no array named ['x', 'y']" in err


@pytest.mark.parametrize(
    "allocation, flag", [("global", "--fraction"), ("fixed", "--ratio")]
)
def test_an_allocation_without_its_knob_is_refused(saved, capsys, allocation, flag):
    _, path, directory = saved
    status, _, err = _run(
        capsys,
        "prune",
        path,
        "--allocation",
        allocation,
        "--out",
        directory / "n.keras",
    )
    assert status == 1 and f"--allocation {allocation} needs {flag}" in err


def test_export_tflite_and_saved_model(saved, capsys):
    model, path, directory = saved
    tflite, saved_dir = directory / "model.tflite", directory / "saved"
    status, out, err = _run(
        capsys, "export", path, "--tflite", tflite, "--saved-model", saved_dir
    )
    assert status == 0, err
    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = _x(4)
    got = []
    for image in x:  # the converted model takes batches of one
        interpreter.set_tensor(detail["index"], image[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    expected = outputs(model, x)
    decoys = [outputs(swapped_channels(model), x)]
    assert_equivalent(
        expected, np.concatenate(got), decoys=decoys, name="the TFLite file"
    )
    reloaded = tf.saved_model.load(str(saved_dir))
    assert_equivalent(
        expected, reloaded.serve(x), decoys=decoys, name="the SavedModel", rtol=1e-5
    )
    assert f"TFLite model written to {tflite}" in out


def _error_line(status, out, err, command):
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hos-keras {command}: error: ")
    return lines[0]


def test_bad_input_gives_one_line_and_status_1(saved, capsys, tmp_path):
    _, path, _ = saved
    line = _error_line(*_run(capsys, "profile", tmp_path / "missing.keras"), "profile")
    assert "no such file" in line

    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a model at all")
    line = _error_line(*_run(capsys, "report", corrupt), "report")
    assert "not a .keras archive" in line
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(path.read_bytes()[:2000])
    line = _error_line(*_run(capsys, "profile", truncated), "profile")
    assert "corrupt" in line
    broken = tmp_path / "broken.keras"
    shutil.make_archive(str(tmp_path / "broken"), "zip", tmp_path, "corrupt.keras")
    (tmp_path / "broken.zip").rename(broken)
    line = _error_line(*_run(capsys, "profile", broken), "profile")
    assert "cannot be loaded as a Keras model" in line

    inputs = keras.Input((4,))
    doubled = layers.Lambda(lambda t: t * 2.0)(layers.Dense(3)(inputs))
    lambda_path = tmp_path / "lambda.keras"
    keras.Model(inputs, doubled).save(lambda_path)
    line = _error_line(*_run(capsys, "profile", lambda_path), "profile")
    assert "refused in safe mode" in line

    dense_only = tmp_path / "dense.keras"
    keras.Sequential([keras.Input((4,)), layers.Dense(3)]).save(dense_only)
    line = _error_line(
        *_run(capsys, "prune", dense_only, "--out", tmp_path / "o.keras"), "prune"
    )
    assert "no channels that can be pruned" in line

    line = _error_line(
        *_run(capsys, "prune", path, "--out", tmp_path / "slim.h5"), "prune"
    )
    assert "must end with .keras" in line
    line = _error_line(
        *_run(capsys, "prune", path, "--out", corrupt / "slim.keras"), "prune"
    )
    assert "is a file, not a directory" in line
    line = _error_line(
        *_run(capsys, "prune", path, "--out", tmp_path / "new" / "slim.keras"), "prune"
    )
    assert f"{tmp_path / 'new'} does not exist; create it (mkdir -p" in line
    legacy = tmp_path / "old.h5"
    legacy.write_bytes(b"\x89HDF\r\n")
    line = _error_line(*_run(capsys, "profile", legacy), "profile")
    assert "legacy HDF5" in line and ".save(" in line and "old.keras" in line
    binary = tmp_path / "plan.bin"
    binary.write_bytes(b"\xfe\xff\x00binary")
    line = _error_line(
        *_run(
            capsys, "prune", path, "--from-plan", binary, "--out", tmp_path / "s.keras"
        ),
        "prune",
    )
    assert f"--from-plan {binary}: not a pruning plan" in line
    line = _error_line(
        *_run(
            capsys,
            "prune",
            path,
            "--allocation",
            "global",
            "-c",
            "3",
            "--out",
            tmp_path / "x.keras",
        ),
        "prune",
    )
    assert "-c/--coefficient applies to --allocation" in line
    line = _error_line(*_run(capsys, "export", path), "export")
    assert "Nothing to export" in line
    assert not (tmp_path / "x.keras").exists() and not (tmp_path / "o.keras").exists()


def test_malformed_arguments_exit_with_status_2(saved, capsys):
    _, path, _ = saved
    for argv in (
        ["prune", str(path), "--macs-reduction", "2", "--out", "x.keras"],
        ["prune", str(path)],
        ["report", str(path), "--criterion", "nope"],
        ["frobnicate"],
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_installed_console_script(saved, tmp_path):
    model, path, _ = saved
    script = Path(sys.executable).parent / "hos-keras"
    assert script.exists(), "setup.py must install the hos-keras console script"
    result = subprocess.run(
        [str(script), "profile", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"params: {hos_keras.profile(model)['params']:,}" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "hos_keras", "profile", str(tmp_path / "none.keras")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"hos-keras profile: error: {tmp_path / 'none.keras'}: no such file."
    )


def test_decompose_writes_the_library_model_and_a_layer_table(saved, capsys):
    model, path, directory = saved
    out = directory / "decomposed.keras"
    status, text, err = _run(
        capsys, "decompose", path, "--out", out, "--factor", "2", "--layers", "stem"
    )
    assert status == 0, err
    expected, report = hos_keras.decompose(
        model, factor=2.0, layers=["stem"], return_report=True
    )
    written = keras.models.load_model(out)
    assert [layer.name for layer in written.layers] == [
        layer.name for layer in expected.layers
    ]
    assert_equivalent(
        outputs(expected, _x()),
        outputs(written, _x()),
        decoys=[outputs(swapped_channels(expected), _x())],
        name="the decomposed model hos-keras decompose wrote",
        rtol=1e-5,
    )
    row = _rows(text, {"stem"})["stem"]
    assert row[1] == "x".join(str(r) for r in report.layers["stem"]["ranks"])
    assert f"MACs {report.macs['original']:,} -> {report.macs['decomposed']:,}" in text
