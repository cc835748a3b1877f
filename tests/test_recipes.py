"""The demo recipe runs end to end (on ResNet-20 to stay fast)."""

import json
import subprocess
import sys
from pathlib import Path

import hos_keras

ROOT = Path(__file__).resolve().parents[1]


def test_report_recipe(tmp_path):
    plan_path = tmp_path / "plan.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "report_resnet56.py"),
            "--depth",
            "20",
            "--target",
            "0.4",
            "--plan-out",
            str(plan_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "stage3_block3_conv1" in out and "Target: 40% fewer MACs" in out
    plan = hos_keras.PruningPlan.from_json(plan_path.read_text())
    assert plan.model_name == "resnet20"
    assert plan.macs_reduction >= 0.4
    assert "slim model:" in out
    assert json.loads(plan_path.read_text())["allocation"] == "target"
