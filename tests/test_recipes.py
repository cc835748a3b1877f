"""The recipes run end to end: Fashion-MNIST on the real files, tfds ones on mock data."""

import importlib
import json
import sys
from pathlib import Path

import keras
import pytest
import tensorflow_datasets as tfds

import hos_keras

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
QUICK = [
    "--epochs",
    "1",
    "--distill-epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--steps",
    "2",
    "--latency-runs",
    "1",
]


def _recipe(name):
    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
    return importlib.import_module(name)


def _check_outputs(out, slim, report):
    for name in ("baseline.keras", "slim.keras", "plan.json", "report.json"):
        assert (out / name).exists(), name
    assert (out / "layers.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["accuracy"]) == {"original", "pruned", "distilled", "finetuned"}
    loaded = keras.models.load_model(out / "slim.keras")
    assert loaded.count_params() == slim.count_params() == report.params["slim"]
    plan = hos_keras.PruningPlan.from_json((out / "plan.json").read_text())
    assert plan == report.plan


@pytest.mark.slow
def test_fashion_mnist_recipe_and_baseline_reuse(tmp_path, capsys):
    recipe = _recipe("fashion_mnist_resnet20")
    out = tmp_path / "fm"
    args = [*QUICK, "--batch-size", "16", "--output-dir", str(out)]
    slim, report = recipe.main(args)
    _check_outputs(out, slim, report)
    assert report.macs["slim"] <= 0.5 * report.macs["original"]
    assert report.pivots == ["stage1_block3_out", "stage2_block3_out"]
    text = capsys.readouterr().out
    assert "accuracy right after pruning" in text and "latency b1" in text
    baseline = (out / "baseline.keras").stat().st_mtime_ns
    recipe.main(args + ["--distill-epochs", "0", "--finetune-epochs", "0"])
    assert "reusing the baseline" in capsys.readouterr().out
    assert (out / "baseline.keras").stat().st_mtime_ns == baseline


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, extra, pivots",
    [
        ("cifar10_resnet56", [], ["stage1_block9_out", "stage2_block9_out"]),
        ("cifar100_resnet56", ["--target", "0.3"], None),
        ("cifar10_mobilenetv2", [], None),
        ("imagenet_mobilenetv2", ["--image-size", "64"], None),
    ],
)
def test_tfds_recipes_on_mock_data(tmp_path, name, extra, pivots):
    recipe = _recipe(name)
    out = tmp_path / "out"
    argv = [
        *QUICK,
        "--batch-size",
        "4",
        "--data-dir",
        str(tmp_path / "tfds"),
        "--output-dir",
        str(out),
        *extra,
    ]
    with tfds.testing.mock_data(num_examples=8):
        slim, report = recipe.main(argv)
    _check_outputs(out, slim, report)
    assert report.macs["slim"] < report.macs["original"]
    if pivots is not None:
        assert report.pivots == pivots
    if "--target" in extra:
        assert report.details["achieved_macs_reduction"] >= 0.3


@pytest.mark.slow
def test_tuning_recipe_two_trials(tmp_path, capsys):
    recipe = _recipe("tune_fashion_mnist")
    out = tmp_path / "tune"
    argv = [
        *QUICK,
        "--baseline",
        "",
        "--trials",
        "2",
        "--limit",
        "64",
        "--batch-size",
        "16",
        "--target",
        "0.3",
        "--output-dir",
        str(out),
    ]
    student, rows = recipe.main(argv)
    assert len(rows) == 2
    saved = keras.models.load_model(out / "best_student.keras")
    baseline = keras.models.load_model(out / "baseline.keras")
    budget = 0.7 * hos_keras.profile(baseline)["macs"]
    assert hos_keras.profile(saved)["macs"] <= budget
    assert saved.count_params() == student.count_params()
    assert "val acc" in capsys.readouterr().out
