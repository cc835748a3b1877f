"""Benchmark: vectorized k34 scoring against the reference per-filter scipy loop.

Scores every convolution filter of keras.applications.ResNet50(weights=None) with
k3 * k4, once with the paper's approach (a Python loop calling scipy.stats.kstat
for each filter) and once with `hos_keras.score_filters`, in the same process, and
checks that both give the same values. Also times the Shapiro-Wilk allocation
(`plan_pruning(..., allocation="shapiro")`) of the whole network.

Run: .venv/bin/python bench/scoring.py   (writes bench/results/scoring.json)
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import keras
import numpy as np
import scipy.stats

import hos_keras

RESULTS = Path(__file__).parent / "results" / "scoring.json"


def reference_loop(model) -> dict[str, np.ndarray]:
    """The paper code's way: one pair of scipy.stats.kstat calls per filter.

    Each filter is cast to float64 first: scipy sums float32 input in float32,
    which would make the reference itself the less accurate side.
    """
    scores = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel.numpy()
            values = []
            for f in range(kernel.shape[-1]):
                w = kernel[..., f].astype(np.float64)
                values.append(scipy.stats.kstat(w, 3) * scipy.stats.kstat(w, 4))
            scores[layer.name] = np.array(values)
    return scores


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def main() -> None:
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    conv_layers = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
    ]
    n_filters = sum(int(layer.kernel.shape[-1]) for layer in conv_layers)
    n_weights = sum(int(np.prod(layer.kernel.shape)) for layer in conv_layers)
    print(
        f"ResNet50: {len(conv_layers)} conv layers, {n_filters} filters, "
        f"{n_weights:,} weights"
    )

    ours, ours_times = timed(lambda: hos_keras.score_filters(model, "k34"), 7)
    reference, reference_times = timed(lambda: reference_loop(model), 1)
    max_rel = max(
        float(np.max(np.abs(ours[n] - reference[n]) / np.abs(reference[n])))
        for n in reference
    )
    same_order = all(
        np.array_equal(
            np.argsort(ours[n], kind="stable"), np.argsort(reference[n], kind="stable")
        )
        for n in reference
    )

    _, plan_times = timed(
        lambda: hos_keras.plan_pruning(
            model, criterion="k34", allocation="shapiro", coefficient=3.7
        ),
        3,
    )
    _, shapiro_times = timed(
        lambda: [hos_keras.shapiro_wilk(layer.kernel.numpy()) for layer in conv_layers],
        3,
    )

    ours_median = statistics.median(ours_times)
    result = {
        "model": "keras.applications.ResNet50(weights=None)",
        "conv_layers": len(conv_layers),
        "conv_filters": n_filters,
        "conv_weights": n_weights,
        "reference_loop_s": reference_times[0],
        "hos_keras_first_call_s": ours_times[0],
        "hos_keras_median_s": ours_median,
        "speedup_median": reference_times[0] / ours_median,
        "speedup_first_call": reference_times[0] / ours_times[0],
        "target_speedup": 50.0,
        "max_relative_difference": max_rel,
        "same_ranking_every_layer": same_order,
        "shapiro_statistics_all_conv_layers_s": statistics.median(shapiro_times),
        "plan_pruning_shapiro_s": statistics.median(plan_times),
        "note": "hos_keras timing scores every layer with filters (incl. the "
        "Dense head); the loop scores the conv layers only.",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "keras": keras.__version__,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        if key != "machine":
            print(f"{key}: {value}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
