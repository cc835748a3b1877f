"""Where the time goes: per-stage latency against MACs of CIFAR ResNet-56's plans.

Builds the TFLite latency model of ResNet-56 (`hos_keras.latency`), plans a
MACs target (`macs_reduction=0.5`) and a latency target (`latency_reduction=0.5`),
and, for every stage (stem, stage1-3, head), sums the MACs (`hos_keras.profile`)
and the fitted time of the weight layers (the latency model's one-layer timings,
before calibration) of the original and of each plan. Both slim models are then
timed against the original in the TFLite interpreter (batch 1, 2 threads).

Run alone: .venv/bin/python bench/latency_layers.py
(writes bench/results/latency_layers.json and prints the README's table)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras

import hos_keras
from hos_keras import latency
from hos_keras.cost_model import ChannelCounter

RESULTS = Path(__file__).parent / "results" / "latency_layers.json"


def _stage(name: str) -> str:
    return (
        name.split("_")[0]
        if name.startswith("stage")
        else ("stem" if name.startswith("stem") else "head")
    )


def _per_stage(model, table, plan=None) -> dict:
    counts = ({}, {}, {})
    if plan is not None:
        graph = hos_keras.channel_groups(model, warn=False)
        keeps = {name: entry.keep for name, entry in plan.groups.items()}
        counts = ChannelCounter(graph).counts(keeps)
    in_channels, out_channels, _ = counts
    cost = hos_keras.profile(model, in_channels, out_channels)
    stages: dict[str, dict] = {}
    for name, entry in table.layers.items():
        stage = stages.setdefault(_stage(name), {"macs": 0, "ms": 0.0})
        c_in = in_channels.get(name, entry["c_in"])
        c_out = out_channels.get(name, entry["c_out"])
        stage["macs"] += cost["layers"][name]["macs"]
        stage["ms"] += table.layer_ms(name, c_in, c_out)
    return stages


def main() -> None:
    keras.utils.set_random_seed(0)
    model = hos_keras.models.resnet56()
    load_before = os.getloadavg()
    table = latency.build_latency_model(model, "tflite")
    plans = {
        "macs_target": hos_keras.plan_pruning(
            model,
            "k34",
            "target",
            macs_reduction=0.5,
            latency_model=table,
            verify_latency=False,
        ),
        "latency_target": hos_keras.plan_pruning(
            model,
            "k34",
            "target",
            latency_reduction=0.5,
            latency_model=table,
            verify_latency=False,
        ),
    }
    slims = {k: hos_keras.slim_model(model, p) for k, p in plans.items()}
    measured = latency.tflite_latency({"original": model, **slims}, runs=400)
    result = {
        "original": _per_stage(model, table),
        **{k: _per_stage(model, table, p) for k, p in plans.items()},
        "measured_tflite_ms": measured,
        "predicted_ms": {
            k: p.details["latency"]["predicted_ms"] for k, p in plans.items()
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| stage | MACs original | MACs-target plan | latency-target plan "
        "| one-layer ms original | MACs-target plan | latency-target plan |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for stage in result["original"]:
        cells = [result[k][stage] for k in ("original", *plans)]
        print(
            f"| {stage} | "
            + " | ".join(f"{c['macs'] / 1e6:.2f} M" for c in cells)
            + " | "
            + " | ".join(f"{c['ms']:.3f}" for c in cells)
            + " |"
        )
    print(
        "measured TFLite ms: " + ", ".join(f"{k} {v:.3f}" for k, v in measured.items())
    )


if __name__ == "__main__":
    main()
