"""The recipes run end to end: Fashion-MNIST on the real files, tfds ones on mock data."""

import importlib
import json
import sys
from pathlib import Path

import keras
import numpy as np
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
    assert (out / "stages.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "report.json").read_text())
    stages = {"original", "pruned", "recalibrated", "distilled", "finetuned"}
    assert set(saved["accuracy"]) == stages
    loaded = keras.models.load_model(out / "slim.keras")
    assert loaded.count_params() == slim.count_params() == report.params["slim"]
    plan = hos_keras.PruningPlan.from_json((out / "plan.json").read_text())
    assert plan == report.plan


def test_decay_epochs_scale_with_the_run_as_multisteplr():
    common = _recipe("recipe_common")
    assert common.decay_epochs((80, 120), 140, 140) == (80, 120)
    assert common.decay_epochs((80, 120), 140, 14) == (8, 12)
    assert common.decay_epochs((80, 120), 140, 1) == (1, 1)
    rate = common.step_decay(1e-3, (80, 120))
    # torch.optim.lr_scheduler.MultiStepLR(milestones=[80, 120], gamma=0.1) stepped
    # once per epoch, written out.
    expected = [1e-3] * 80 + [1e-4] * 40 + [1e-5] * 20
    np.testing.assert_allclose([rate(e) for e in range(140)], expected, rtol=1e-12)


@pytest.mark.parametrize(
    "name, coefficient, finetune_lr",
    [("cifar10_resnet56", 3.7, 1e-4), ("cifar100_resnet56", 8.7, 1e-5)],
)
def test_paper_recipes_give_compress_the_reference_settings(
    monkeypatch, tmp_path, capsys, name, coefficient, finetune_lr
):
    common = _recipe("recipe_common")
    received = {}

    class Report:
        def plot(self, path):
            received["plot"] = path

        def plot_stages(self, path):
            received["stages"] = path

    def compress(model, train, val, **kwargs):
        received.update(kwargs)
        return None, Report()

    monkeypatch.setattr(common.hos_keras, "compress", compress)
    args = _recipe(name).arguments(["--output-dir", str(tmp_path)])
    common.compress_and_report(None, None, None, args)
    pruning, training = received["pruning"], received["training"]
    assert pruning.allocation_options["coefficient"] == coefficient
    assert pruning.scope == "inner"  # the first conv of each block only
    assert (args.batch_size, args.distill_epochs, args.finetune_epochs) == (64, 140, 30)
    assert training.distill_epochs == 140 and training.finetune_epochs == 30
    for key, lr, nesterov in (
        ("distill_optimizer", 1e-3, True),
        ("finetune_optimizer", finetune_lr, False),
    ):
        optimizer = getattr(training, key)
        assert float(optimizer.learning_rate) == pytest.approx(lr)
        assert (optimizer.momentum, optimizer.nesterov) == (0.9, nesterov)
    rate = training.distill_lr_schedule
    assert [rate(e) for e in (79, 80, 119, 120)] == pytest.approx(
        [1e-3, 1e-4, 1e-4, 1e-5]
    )
    # Fewer epochs: the decay epochs scale (80, 120 of 140 -> 8, 12 of 14).
    args = _recipe(name).arguments(
        ["--output-dir", str(tmp_path), "--distill-epochs", "14"]
    )
    common.compress_and_report(None, None, None, args)
    rate = received["training"].distill_lr_schedule
    assert [rate(e) for e in (7, 8, 11, 12)] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-5])
    assert "x0.1 at epochs [8, 12] (epochs [80, 120] of 140, scaled to 14)" in (
        capsys.readouterr().out
    )


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
    assert "right after pruning" in text and "latency b1" in text
    baseline = (out / "baseline.keras").stat().st_mtime_ns
    recipe.main(
        args
        + ["--distill-epochs", "0", "--finetune-epochs", "0", "--latency-runs", "0"]
    )
    assert "reusing the baseline" in capsys.readouterr().out
    assert (out / "baseline.keras").stat().st_mtime_ns == baseline
    # The paper's A2 and A3 from the command line, on the same baseline.
    quick = ["--distill-epochs", "1", "--finetune-epochs", "0", "--latency-runs", "0"]
    for approach in ("decompose", "prune+decompose"):
        slim, report = recipe.main([*args, *quick, "--approach", approach])
        assert report.approach == approach and report.decomposition["layers"]
        assert any(layer.name.endswith("_core") for layer in slim.layers)
        assert report.macs["slim"] < report.macs["original"]
        assert (report.plan is None) == (approach == "decompose")
        assert report.pivots == ["stage1_block3_out", "stage2_block3_out"]
        saved = json.loads((out / "report.json").read_text())
        assert saved["approach"] == approach
    text = capsys.readouterr().out
    assert "right after decomposition" in text
    assert "right after both" in text
    with pytest.raises(SystemExit, match=r"--approach prune\+decompose"):
        recipe.main(
            [*args, *quick, "--approach", "decompose", "--macs-reduction", "0.4"]
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, extra, pivots",
    [
        ("cifar10_resnet56", [], ["stage1_block9_out", "stage2_block9_out"]),
        ("cifar100_resnet56", ["--macs-reduction", "0.3"], None),
        ("cifar10_mobilenetv2", [], None),
        ("imagenet_mobilenetv2", ["--image-size", "64"], None),
    ],
)
def test_tfds_recipes_on_mock_data(tmp_path, name, extra, pivots):
    recipe = _recipe(name)
    out = tmp_path / "out"
    # The baseline is built, compiled and saved but not trained (--epochs 0), and
    # nothing is timed (--latency-runs 0): the Fashion-MNIST test runs both paths.
    argv = [
        *QUICK,
        "--epochs",
        "0",
        "--latency-runs",
        "0",
        "--batch-size",
        "4",
        "--data-dir",
        str(tmp_path / "tfds"),
        "--download",  # mock_data makes the download a no-op
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
    if "--macs-reduction" in extra:
        assert report.details["achieved_macs_reduction"] >= 0.3
    if "resnet56" in name:  # scope="inner": the residual streams keep their width
        widths = [slim.get_layer(f"stage{s}_block9_conv2").filters for s in (1, 2, 3)]
        assert widths == [16, 32, 64]


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
        "--macs-reduction",
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


def test_a_pruning_flag_the_user_gives_takes_effect(monkeypatch, tmp_path, capsys):
    common = _recipe("recipe_common")
    received = {}

    class Report:
        def plot(self, path):
            pass

        def plot_stages(self, path):
            pass

    def compress(model, train, val, **kwargs):
        received.clear()
        received.update(kwargs)
        return None, Report()

    monkeypatch.setattr(common.hos_keras, "compress", compress)
    recipe = _recipe("fashion_mnist_resnet20")
    out = ["--output-dir", str(tmp_path)]
    common.compress_and_report(None, None, None, recipe.arguments(out))
    pruning = received["pruning"]
    assert pruning.macs_reduction == 0.5 and not pruning.allocation_options
    args = recipe.arguments([*out, "--coefficient", "3.7"])
    common.compress_and_report(None, None, None, args)
    pruning = received["pruning"]
    assert pruning.allocation_options == {"coefficient": 3.7}
    assert pruning.macs_reduction is None
    args = recipe.arguments([*out, "--coefficient", "3.7", "--macs-reduction", "0.4"])
    with pytest.raises(SystemExit, match="exclude each other"):
        common.compress_and_report(None, None, None, args)
    # --help shows every default, the recipe's own included.
    with pytest.raises(SystemExit):
        recipe.arguments(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.5)" in shown and "(default: k34)" in shown


def test_progress_bar_on_a_terminal_one_line_per_epoch_otherwise(monkeypatch):
    common = _recipe("recipe_common")
    monkeypatch.setattr(common.sys.stdout, "isatty", lambda: True, raising=False)
    assert common.progress() == 1
    monkeypatch.setattr(common.sys.stdout, "isatty", lambda: False, raising=False)
    assert common.progress() == 2
