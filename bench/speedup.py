"""Benchmark: measured speed-up of slimmed models, MACs targets against latency targets.

For CIFAR ResNet-56 (32x32) and keras.applications MobileNetV2 and ResNet50
(weights=None, 128x128 inputs to keep the run short on 2 cores), plans with the
k34 criterion and the Shapiro-Wilk allocation searched for:

- `macs_reduction=0.5` (2x fewer MACs), with `round_to=1` and `round_to=8`;
- `latency_reduction=0.5` on the TFLite interpreter (2x faster, predicted by
  `hos_keras.latency`), with `round_to` 1, 8 and `"auto"` (the measured channel
  tile), and with the global allocation as the base (`round_to` 1 and 8); a plan
  that cannot reach the target is recorded as unreachable;
- the same latency target measured in the loop (`verify_latency=True`: a plan
  that misses on the runtime is planned again, first through the latency model,
  then by a measured search over the MACs reduction, up to
  `latency_corrections=4` more plans), with scope "all" and "inner" (residual
  streams kept whole, the paper's scope);

- the paper's low-rank step (`hos_keras.decompose`, Tucker-2 by HOOI of every kxk
  conv with at least 8 channels): at the reference's factor X = 1.71, at the factor
  that removes half the MACs (`factor_for_macs`), and after the MACs-target plan
  (A3: prune, then decompose at X = 1.71); MobileNetV2 has no such conv (its kxk
  convs are depthwise) and gets no decomposed row;

then every slim model and the original are timed in turn, in one run: the TFLite
interpreter (batch 1, 2 threads) and the TensorFlow runtime (batch 64). Also
recorded: the MACs reduction each plan needed, the latency model's predicted
speed-up and its build time, and the machine's load average before and after.
Goal for the latency plans: at least 1.9x measured in TFLite.

Run alone (another process on the cores skews the ratios):
    .venv/bin/python bench/speedup.py [--quick] [--models cifar_resnet56 ...]
(writes bench/results/speedup.json; with --models, only those entries are replaced)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import hos_keras
from hos_keras import latency

RESULTS = Path(__file__).parent / "results" / "speedup.json"


VARIANTS = {
    "macs_target": {"macs_reduction": 0.5},
    "macs_target_round_to_8": {"macs_reduction": 0.5, "round_to": 8},
    "latency_target": {"latency_reduction": 0.5},
    "latency_target_round_to_8": {"latency_reduction": 0.5, "round_to": 8},
    "latency_target_round_to_auto": {"latency_reduction": 0.5, "round_to": "auto"},
    "latency_target_global": {"latency_reduction": 0.5, "base": "global"},
    "latency_target_global_round_to_8": {
        "latency_reduction": 0.5,
        "base": "global",
        "round_to": 8,
    },
    "latency_target_measured": {"latency_reduction": 0.5, "verify_latency": True},
    "latency_target_measured_inner": {
        "latency_reduction": 0.5,
        "verify_latency": True,
        "scope": "inner",
    },
}


def decomposed(model, plans) -> tuple[dict, dict]:
    """The decomposed variants of `model` and their details."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no layer is selected" on MobileNetV2
        if hos_keras.decompose(model, max_iter=0).count_params() >= (
            model.count_params()
        ):
            return {}, {}
    variants, details = {}, {}
    start = time.perf_counter()
    try:
        half = hos_keras.factor_for_macs(model, 0.5)
    except hos_keras.errors.InvalidArgumentError as error:
        # ResNet50's 3x3 convs hold too few of its MACs to halve them.
        half, details["tucker2_macs_0.5_unreachable"] = None, str(error)
        print(error, flush=True)
    search_s = time.perf_counter() - start
    slim = hos_keras.slim_model(model, plans["macs_target"])
    for variant, source, factor in (
        ("tucker2_x1.71", model, 1.71),
        ("tucker2_macs_0.5", model, half),
        ("macs_target_then_tucker2_x1.71", slim, 1.71),
    ):
        if factor is None:
            continue
        start = time.perf_counter()
        variants[variant] = hos_keras.decompose(source, factor=factor)
        details[variant] = {
            "factor": factor,
            "decompose_s": time.perf_counter() - start,
        }
    if half is not None:
        details["tucker2_macs_0.5"]["factor_search_s"] = search_s
    return variants, details


def bench(name, build, shape, runs, cache_dir) -> dict:
    keras.utils.set_random_seed(0)
    model = build()
    start = time.perf_counter()
    table = latency.build_latency_model(model, "tflite", cache_dir=cache_dir)
    build_s = time.perf_counter() - start
    plans, slims, unreachable = {}, {}, {}
    load_before = os.getloadavg()
    for variant, options in VARIANTS.items():
        options = {"verify_latency": False, **options}
        start = time.perf_counter()
        try:
            plans[variant] = hos_keras.plan_pruning(
                model,
                criterion="k34",
                allocation="target",
                latency_model=table,
                **options,
            )
        except hos_keras.errors.InvalidArgumentError as error:
            unreachable[variant] = str(error)
            print(f"{name} {variant}: {error}", flush=True)
            continue
        slims[variant] = hos_keras.slim_model(model, plans[variant])
        plans[variant].details["plan_s"] = time.perf_counter() - start
    low_rank, low_rank_details = decomposed(model, plans)
    models = {"original": model, **slims, **low_rank}
    lite = latency.tflite_latency(models, None, runs=runs * 10, threads=2)
    sample = np.random.default_rng(0).normal(size=(1, *shape)).astype("float32")
    tf64 = latency.measure_latency(models, sample, (64,), runs=runs)
    result = {
        "input_shape": list(shape),
        "macs": plans["macs_target"].macs_before,
        "latency_model_build_s": build_s,
        "latency_model_tile": table.tile,
        "latency_model_scale": table.scale,
        "tflite_ms": lite,
        "tf_batch64_ms": {k: v[64] for k, v in tf64.items()},
        "unreachable": unreachable,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    for variant, plan in plans.items():
        result[variant] = {
            "macs_after": plan.macs_after,
            "macs_ratio": plan.macs_before / plan.macs_after,
            "params_after": plan.params_after,
            "predicted_tflite_speedup": plan.details["latency"]["predicted_speedup"],
            "speedup_tflite_batch1": lite["original"] / lite[variant],
            "speedup_tf_batch64": tf64["original"][64] / tf64[variant][64],
            "plan_s": plan.details["plan_s"],
        }
        rounds = plan.details["latency"].get("rounds")
        if rounds:
            result[variant]["rounds"] = rounds
            result[variant]["met_in_loop"] = plan.details["latency"]["met"]
        row = result[variant]
        print(
            f"{name} {variant}: MACs x{row['macs_ratio']:.2f} | TFLite b1 "
            f"x{row['speedup_tflite_batch1']:.2f} (predicted "
            f"x{row['predicted_tflite_speedup']:.2f}) | TF b64 "
            f"x{row['speedup_tf_batch64']:.2f}",
            flush=True,
        )
    if "tucker2_macs_0.5_unreachable" in low_rank_details:
        unreachable["tucker2_macs_0.5"] = low_rank_details[
            "tucker2_macs_0.5_unreachable"
        ]
    for variant, small in low_rank.items():
        cost = hos_keras.profile(small)
        result[variant] = {
            **low_rank_details[variant],
            "macs_after": cost["macs"],
            "macs_ratio": result["macs"] / cost["macs"],
            "params_after": cost["params"],
            "speedup_tflite_batch1": lite["original"] / lite[variant],
            "speedup_tf_batch64": tf64["original"][64] / tf64[variant][64],
        }
        row = result[variant]
        print(
            f"{name} {variant}: MACs x{row['macs_ratio']:.2f} | TFLite b1 "
            f"x{row['speedup_tflite_batch1']:.2f} | TF b64 "
            f"x{row['speedup_tf_batch64']:.2f}",
            flush=True,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats (a smoke run, not for the README)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=["cifar_resnet56", "MobileNetV2", "ResNet50"],
        help="benchmark only these (default: all three)",
    )
    args = parser.parse_args()
    runs = 3 if args.quick else 15
    size = (128, 128, 3)
    cases = {
        "cifar_resnet56": (lambda: hos_keras.models.resnet56(), (32, 32, 3)),
        "MobileNetV2": (
            lambda: keras.applications.MobileNetV2(weights=None, input_shape=size),
            size,
        ),
        "ResNet50": (
            lambda: keras.applications.ResNet50(weights=None, input_shape=size),
            size,
        ),
    }
    results = {}
    if args.models and RESULTS.exists():
        results = json.loads(RESULTS.read_text())
        earlier = results.get("machine", {})
        for entry in results.values():  # runs written before loads were per model
            if "tflite_ms" in entry and "load_average_before" not in entry:
                for key in ("runs", "load_average_before", "load_average_after"):
                    entry[key] = earlier.get(key)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache_dir:  # measure afresh every run
        for name, (build, shape) in cases.items():
            if not args.models or name in args.models:
                results[name] = bench(name, build, shape, runs, cache_dir)
                results[name]["runs"] = runs
                RESULTS.write_text(json.dumps(results, indent=2) + "\n")  # each model
                print(f"wrote {name} to {RESULTS}")


if __name__ == "__main__":
    main()
