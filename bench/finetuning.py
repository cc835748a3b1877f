"""What the accuracy benchmarks share: test accuracy, the fine-tuning of a
student against its teacher, the machine record, and runs written one by one
to a JSON file that a second call resumes.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

import hos_keras
from hos_keras import training


def machine() -> dict:
    """Versions, cores and the load average, for the JSON."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "load_average": os.getloadavg(),
    }


def accuracy(model, test) -> float:
    """Top-1 accuracy of a logits model on a batched test dataset."""
    correct = total = 0
    for x, y in test:
        logits = model(x, training=False)
        correct += int(tf.reduce_sum(tf.cast(tf.argmax(logits, 1) == y, tf.int32)))
        total += int(y.shape[0])
    return correct / total


def spread(values) -> dict:
    """Mean (None for no value), sample standard deviation (0 for one) and count."""
    values = np.asarray(values, dtype=float)
    return {
        "mean": float(values.mean()) if len(values) else None,
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def copy(model):
    """A copy of a model without compile state."""
    twin = type(model).from_config(model.get_config())
    twin.set_weights(model.get_weights())
    return twin


def sgd(lr, steps):
    """The benchmarks' optimizer: SGD Nesterov, weight decay 5e-4, cosine to 0."""
    return training.sgd(lr, steps=steps, weight_decay=5e-4)


def adamw(lr, steps, weight_decay):
    """The transformer benchmarks' optimizer: AdamW, a linear warm-up over the
    first 5% of the steps to `lr`, then cosine to 0."""
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=lr, warmup_steps=max(1, steps // 20)
    )
    return keras.optimizers.AdamW(schedule, weight_decay=weight_decay)


def finetune(student, teacher, plan, train, seed, args, auxiliary=True, optimizer=sgd):
    """Trains `student` for `args.finetune_epochs` from `args.finetune_lr`
    (`optimizer(lr, steps)`: SGD, cosine, by default) with the task loss and,
    with `auxiliary`, the output and pivot MSEs against `teacher` (output weight
    1.0, automatic pivots), through `hos_keras.training.distill_then_finetune`;
    returns the seconds it took and the pivots matched."""
    distiller = hos_keras.HOSDistiller(student, teacher, plan=plan, output_weight=1.0)
    epochs = args.finetune_epochs
    optimizer = optimizer(args.finetune_lr, int(train.cardinality()) * epochs)
    stage = (
        {"distill_epochs": epochs, "finetune_epochs": 0, "distill_optimizer": optimizer}
        if auxiliary
        else {
            "distill_epochs": 0,
            "finetune_epochs": epochs,
            "finetune_optimizer": optimizer,
        }
    )
    start = time.perf_counter()
    training.distill_then_finetune(
        distiller,
        train.shuffle(64, seed=seed),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **stage,
    )
    return time.perf_counter() - start, list(distiller.pivots)


class Runs:
    """Benchmark runs, written to `out` after each one with the table
    `summarize(runs)` makes; the runs of an earlier call with the same config
    are read back and not repeated."""

    def __init__(self, out: str, config: dict, summarize: Callable[[list], list]):
        self.out, self.config, self.summarize = out, config, summarize
        self.runs: list[dict] = []
        self.began = time.perf_counter()
        if os.path.exists(out):
            with open(out, encoding="utf-8") as stream:
                earlier = json.load(stream)
            if earlier.get("config") == config:
                self.runs = earlier["runs"]
                print(f"resuming: {len(self.runs)} runs in {out}")

    def done(self, **keys) -> bool:
        """Whether a run with these values was recorded."""
        return any(all(r.get(k) == v for k, v in keys.items()) for r in self.runs)

    def add(self, **run) -> None:
        """Records a run (with the load average) and rewrites the file."""
        self.runs.append({**run, "load_average": os.getloadavg()})
        self.write()

    def write(self) -> list:
        """Writes the file; returns the table."""
        table = self.summarize(self.runs)
        os.makedirs(os.path.dirname(self.out) or ".", exist_ok=True)
        with open(self.out, "w", encoding="utf-8") as stream:
            json.dump(
                {
                    "config": self.config,
                    "table": table,
                    "runs": self.runs,
                    "minutes_this_call": (time.perf_counter() - self.began) / 60,
                    "machine": machine(),
                },
                stream,
                indent=1,
            )
        return table
