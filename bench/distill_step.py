"""Benchmark: cost of one HOSDistiller training step against its parts.

CIFAR ResNet-56 teacher (32x32, batch 64, CPU), student slimmed to 50% fewer MACs.
Timed alternately in one process: the student's own training step (task loss only,
`train_on_batch`), the teacher's inference, and the HOSDistiller step with the
output term and two intermediate losses (`train_on_batch`). The teacher runs as
the distiller runs it: one `tf.function` call in inference mode returning the
output and the pivot features, with none of `predict_on_batch`'s own dispatch,
which the distiller does not pay (its teacher pass is inside its training step).
Target: distiller step <= 1.15 x (student step + teacher inference).

Run: .venv/bin/python bench/distill_step.py   (writes bench/results/distill.json)
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
import tensorflow as tf

import hos_keras

RESULTS = Path(__file__).parent / "results" / "distill.json"
BATCH = 64
REPEATS = 15


def main() -> None:
    load_before = os.getloadavg()
    keras.utils.set_random_seed(0)
    teacher = hos_keras.models.resnet56()
    plan = hos_keras.plan_pruning(teacher, allocation="target", macs_reduction=0.5)
    student = hos_keras.slim_model(teacher, plan)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    student.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=loss)
    distiller_student = hos_keras.slim_model(teacher, plan)
    distiller = hos_keras.HOSDistiller(distiller_student, teacher, plan=plan)
    distiller.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=loss)

    features = keras.Model(
        teacher.inputs,
        [teacher.outputs[0], *(teacher.get_layer(p).output for p in distiller.pivots)],
    )
    teacher_inference = tf.function(
        lambda x: features(x, training=False), autograph=False
    )

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, 32, 32, 3)), dtype=tf.float32)
    y = tf.constant(rng.integers(0, 10, BATCH))
    steps = {
        "student_train_step": lambda: student.train_on_batch(x, y),
        "teacher_inference": lambda: teacher_inference(x),
        "distiller_train_step": lambda: distiller.train_on_batch(x, y),
    }
    for fn in steps.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in steps}
    for _ in range(REPEATS):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    parts = median["student_train_step"] + median["teacher_inference"]
    result = {
        "model": "CIFAR ResNet-56, student at 50% fewer MACs",
        "batch": BATCH,
        "repeats": REPEATS,
        "pivots": distiller.pivots,
        "teacher_inference": "one tf.function call: output and pivot features",
        "seconds_per_step": median,
        "distiller_over_parts": median["distiller_train_step"] / parts,
        "target_distiller_over_parts": 1.15,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in median.items():
        print(f"{name}: {value * 1000:.1f} ms")
    print(
        f"distiller / (student step + teacher inference) = "
        f"{result['distiller_over_parts']:.3f} (target <= 1.15)"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
