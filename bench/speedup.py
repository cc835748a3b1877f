"""Benchmark: measured CPU speed-up of slimmed models, and the cost of surgery.

For CIFAR ResNet-56 (32x32) and keras.applications MobileNetV2 and ResNet50
(weights=None, 128x128 inputs to keep the run short on 2 cores), each slimmed with
`allocation="target", macs_reduction=0.5`:

- inference throughput of the original and the slim model, measured alternately
  in the same process: TensorFlow runtime (a tf.function, batch 64 and batch 1)
  and the TFLite interpreter (2 threads, batch 1);
- the same with `round_to=8` (kept channels a multiple of 8, which vectorized
  kernels prefer);
- the time of `slim_model` against `keras.models.clone_model` + `set_weights` of
  the same model (the floor for rebuilding a model).

Targets: speed-up >= 0.8 x the MACs ratio; slim_model <= 2 x the clone time.

Run: .venv/bin/python bench/speedup.py [--quick]   (writes bench/results/speedup.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import hos_keras

RESULTS = Path(__file__).parent / "results" / "speedup.json"


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tf_throughput(models, batch: int, shape, repeats: int) -> list[float]:
    """Images per second of each model, timed alternately so noise hits both."""
    x = tf.constant(
        np.random.default_rng(0).normal(size=(batch, *shape)), dtype=tf.float32
    )
    fns = [tf.function(lambda t, m=m: m(t, training=False)) for m in models]
    for fn in fns:
        fn(x)
        fn(x)
    times = [[] for _ in models]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn(x).numpy()
            times[i].append(time.perf_counter() - start)
    return [batch / statistics.median(t) for t in times]


def _tflite_throughput(models, shape, repeats: int) -> list[float]:
    interpreters = []
    for model in models:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        interpreter = tf.lite.Interpreter(
            model_content=converter.convert(), num_threads=2
        )
        interpreter.allocate_tensors()
        interpreters.append(interpreter)
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype("float32")
    times = [[] for _ in models]
    for interpreter in interpreters:
        index = interpreter.get_input_details()[0]["index"]
        interpreter.set_tensor(index, x)
        interpreter.invoke()
    for _ in range(repeats):
        for i, interpreter in enumerate(interpreters):
            index = interpreter.get_input_details()[0]["index"]
            start = time.perf_counter()
            interpreter.set_tensor(index, x)
            interpreter.invoke()
            times[i].append(time.perf_counter() - start)
    return [1.0 / statistics.median(t) for t in times]


def _clone_with_weights(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def bench(name, build, shape, repeats, round_to=1) -> dict:
    keras.utils.set_random_seed(0)
    model = build()
    plan = hos_keras.plan_pruning(
        model,
        criterion="k34",
        allocation="target",
        macs_reduction=0.5,
        round_to=round_to,
    )
    slim = hos_keras.slim_model(model, plan)
    macs_ratio = plan.macs_before / plan.macs_after
    slim_s = _median_time(lambda: hos_keras.slim_model(model, plan), 3)
    clone_s = _median_time(lambda: _clone_with_weights(model), 3)
    tf64 = _tf_throughput([model, slim], 64, shape, repeats)
    tf1 = _tf_throughput([model, slim], 1, shape, repeats * 5)
    lite = _tflite_throughput([model, slim], shape, repeats * 5)
    result = {
        "input_shape": list(shape),
        "round_to": round_to,
        "macs_before": plan.macs_before,
        "macs_after": plan.macs_after,
        "macs_ratio": macs_ratio,
        "params_before": plan.params_before,
        "params_after": plan.params_after,
        "prunable_groups": len(plan.groups),
        "frozen_groups": len(plan.frozen),
        "tf_batch64_images_per_s": {"original": tf64[0], "slim": tf64[1]},
        "tf_batch1_images_per_s": {"original": tf1[0], "slim": tf1[1]},
        "tflite_batch1_images_per_s": {"original": lite[0], "slim": lite[1]},
        "speedup_tf_batch64": tf64[1] / tf64[0],
        "speedup_tf_batch1": tf1[1] / tf1[0],
        "speedup_tflite_batch1": lite[1] / lite[0],
        "target_speedup": 0.8 * macs_ratio,
        "slim_model_s": slim_s,
        "clone_and_set_weights_s": clone_s,
        "slim_over_clone": slim_s / clone_s,
        "target_slim_over_clone": 2.0,
    }
    print(
        f"{name} (round_to={round_to}): MACs x{macs_ratio:.2f} | TF b64 x{result['speedup_tf_batch64']:.2f}"
        f" b1 x{result['speedup_tf_batch1']:.2f} | TFLite b1 "
        f"x{result['speedup_tflite_batch1']:.2f} | slim_model {slim_s:.2f} s vs "
        f"clone {clone_s:.2f} s",
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
    args = parser.parse_args()
    repeats = 2 if args.quick else 7
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
    for name, (build, shape) in cases.items():
        for round_to in (1, 8):
            key = name if round_to == 1 else f"{name}_round_to_8"
            results[key] = bench(name, build, shape, repeats, round_to)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "repeats": repeats,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
