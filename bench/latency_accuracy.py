"""Benchmark: accuracy of a latency-target plan against a MACs-target plan at the
same measured speed-up (Fashion-MNIST ResNet-20, the demo's fine-tuning).

1. The demo's baseline (3 epochs; reused from runs/fashion_mnist_resnet20/ when
   there) is planned with `latency_reduction=0.5` on the TFLite interpreter (k34
   criterion, Shapiro-Wilk base); its slim model's speed-up is measured.
2. `macs_reduction` is bisected until the MACs-target plan's slim model measures
   the same TFLite speed-up (within 3%).
3. Both go through `hos_keras.compress` with the demo's distillation and
   fine-tuning (1 + 1 epochs, its optimizers), and the test accuracies are
   compared.

Run alone: .venv/bin/python bench/latency_accuracy.py [--steps N]
(writes bench/results/latency_accuracy.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import keras

import hos_keras
from hos_keras import latency

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))

import fashion_mnist_resnet20 as demo  # the demo's own settings
import recipe_common as common

RESULTS = Path(__file__).parent / "results" / "latency_accuracy.json"


def _speedup(model, plan, runs: int) -> float:
    slim = hos_keras.slim_model(model, plan)
    times = latency.tflite_latency({"original": model, "slim": slim}, runs=runs)
    return times["original"] / times["slim"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="batches per epoch (smoke runs)")
    parser.add_argument("--runs", type=int, default=300, help="TFLite timing runs")
    cli = parser.parse_args()
    args = demo.arguments(
        ["--output-dir", str(ROOT / "runs" / "fashion_mnist_resnet20")]
        + (["--steps", str(cli.steps)] if cli.steps else [])
    )
    train, test, model = common.fashion_mnist_resnet20(args)  # the demo's
    load_before = os.getloadavg()
    start = time.perf_counter()
    table = latency.build_latency_model(model, "tflite")
    build_s = time.perf_counter() - start
    lat_plan = hos_keras.plan_pruning(
        model,
        "k34",
        "target",
        latency_reduction=0.5,
        latency_model=table,
        verify_latency=False,
    )
    lat_speedup = _speedup(model, lat_plan, cli.runs)
    lo, hi = 0.05, 0.9
    matched = None
    for _ in range(8):
        mid = 0.5 * (lo + hi)
        plan = hos_keras.plan_pruning(model, "k34", "target", macs_reduction=mid)
        speedup = _speedup(model, plan, cli.runs)
        print(f"macs_reduction={mid:.3f}: measured x{speedup:.2f}", flush=True)
        matched = (mid, plan, speedup)
        if abs(speedup / lat_speedup - 1) <= 0.03:
            break
        if speedup < lat_speedup:
            lo = mid
        else:
            hi = mid
    macs_target, _, macs_speedup = matched
    results = {}
    for name, settings in (
        ("latency_plan", {"target_latency": 0.5, "latency_model": table}),
        ("macs_plan", {"target": macs_target}),
    ):
        keras.utils.set_random_seed(args.seed)
        _, report = hos_keras.compress(
            model,
            train,
            test,
            criterion="k34",
            allocation="shapiro",
            distill_epochs=args.distill_epochs,
            finetune_epochs=args.finetune_epochs,
            distill_optimizer=keras.optimizers.SGD(
                args.distill_lr, momentum=0.9, nesterov=True
            ),
            finetune_optimizer=keras.optimizers.SGD(
                args.finetune_lr, momentum=0.9, nesterov=True
            ),
            latency_batch_sizes=(),
            verbose=2,
            **settings,
        )
        results[name] = {
            "macs_ratio": report.plan.macs_before / report.plan.macs_after,
            "accuracy": {k: v.get("accuracy") for k, v in report.metrics.items()},
            "tflite_ms": report.tflite_latency_ms,
        }
    results["latency_plan"]["measured_speedup"] = lat_speedup
    results["latency_plan"]["predicted_speedup"] = lat_plan.details["latency"][
        "predicted_speedup"
    ]
    results["macs_plan"]["macs_reduction"] = macs_target
    results["macs_plan"]["measured_speedup"] = macs_speedup
    results["latency_model_build_s"] = build_s
    results["steps"] = args.steps
    results["load_average_before"] = load_before
    results["load_average_after"] = os.getloadavg()
    for name in ("latency_plan", "macs_plan"):
        row = results[name]
        print(
            f"{name}: MACs x{row['macs_ratio']:.2f}, TFLite x"
            f"{row['measured_speedup']:.2f}, accuracy after fine-tuning "
            f"{row['accuracy'].get('finetuned')}"
        )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
