"""A small ViT on Fashion-MNIST: accuracy kept at 2x fewer MACs by heads and MLP
widths, and the speed-up measured on TFLite and the TensorFlow runtime.

The teacher is a keras-hub `ViTImageClassifier` on a `ViTBackbone` (28x28x1
images, 4x4 patches, 4 layers, 4 heads, hidden 64, MLP 128, random init) trained
on the 60,000 training images with AdamW. One allocation fixes the widths every
criterion prunes to: the fixed allocation's ratio, searched for `--target`
fewer MACs, the same in every block (it depends on channel counts only). The
criteria (k34, abs_k34, l1, random and the data criterion taylor on 512
training images) therefore differ only in which heads and MLP units go. Each
student is distilled against the teacher for `--finetune-epochs` of
`--finetune-images` images with the output and pivot MSEs (HOSDistiller,
output weight 1.0, automatic pivots) and AdamW, for `--seeds` seeds. Test accuracy on the 10,000 test images: mean and
standard deviation beside the baseline.

With `--speed`, the latency of the teacher and of two students instead: the
k34 plan at the MACs target above, and a plan searched for `--target` of the
TFLite latency (`latency_reduction`, l1). Each model is converted to TFLite
(float32) and timed by interleaved single-image calls (2 threads), and timed
on the TensorFlow runtime (a `tf.function` of the model), batch 1; the median
of the calls and the interquartile range are recorded. Run it alone on the
machine.

Run: .venv/bin/python bench/vit.py            (about 60 minutes on 2 CPU cores)
     .venv/bin/python bench/vit.py --speed    (about 10 minutes, baseline cached)
Writes bench/results/vit_accuracy.json or bench/results/vit_speed.json.
"""

from __future__ import annotations

import argparse
import os
import time

import finetuning
import keras
import numpy as np
from finetuning import Runs, accuracy, machine, spread

import hos_keras
from hos_keras import data

CRITERIA = ("k34", "abs_k34", "l1", "random", "taylor")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NETWORK = "keras-hub ViT, 28x28x1, patch 4, 4 layers, 4 heads, hidden 64, MLP 128"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=6, help="baseline epochs")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument(
        "--finetune-images", type=int, default=12800, help="per distillation epoch"
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--target", type=float, default=0.5, help="reduction")
    p.add_argument("--lr", type=float, default=2e-3, help="baseline peak lr")
    p.add_argument("--finetune-lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--limit", type=int, help="training images (quick checks)")
    p.add_argument("--calls", type=int, default=300, help="timed calls per model")
    p.add_argument("--cache-dir", default="runs/bench_vit")
    p.add_argument("--speed", action="store_true", help="time the models instead")
    p.add_argument("--out", help="results file")
    return p.parse_args()


def vit() -> keras.Model:
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(28, 28, 1),
        patch_size=4,
        num_layers=4,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
    )
    return keras_hub.models.ViTImageClassifier(
        backbone, num_classes=10, activation=None, preprocessor=None
    )


def adamw(lr: float, steps: int):
    return finetuning.adamw(lr, steps, weight_decay=0.05)


def train_baseline(args, train, test):
    os.makedirs(args.cache_dir, exist_ok=True)
    path = os.path.join(args.cache_dir, f"vit_e{args.epochs}_n{args.limit}.keras")
    if os.path.exists(path):
        print(f"reusing {path}")
        return keras.models.load_model(path), 0.0
    keras.utils.set_random_seed(0)
    model = vit()
    model.compile(
        optimizer=adamw(args.lr, int(train.cardinality()) * args.epochs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(train, validation_data=test, epochs=args.epochs, verbose=2)
    elapsed = time.perf_counter() - start
    model.save(path)
    return model, elapsed


class Plans:
    """One plan per criterion, made when first asked for, all at the widths of
    the fixed-ratio search (which depends on channel counts only)."""

    def __init__(self, args, teacher, calibration):
        self.teacher, self.calibration = teacher, calibration
        reference = hos_keras.plan_pruning(
            teacher, "l1", "target", macs_reduction=args.target, base="fixed"
        )
        self.widths = {g: len(p.keep) for g, p in reference.groups.items()}
        self.ratios = {
            g: 1.0 - self.widths[g] / p.channels for g, p in reference.groups.items()
        }
        self.found = {}
        print(
            f"widths {sorted(set(self.widths.values()))}: "
            f"{reference.macs_reduction:.1%} fewer MACs, "
            f"{reference.params_reduction:.1%} fewer parameters",
            flush=True,
        )

    def __getitem__(self, criterion: str):
        if criterion not in self.found:
            scorer = hos_keras.criteria.get_criterion(criterion)
            needs = bool(getattr(scorer, "statistics", ()))
            plan = hos_keras.plan_pruning(
                self.teacher,
                criterion,
                "fixed",
                ratio=self.ratios,
                data=self.calibration if needs else None,
            )
            kept = {g: len(p.keep) for g, p in plan.groups.items()}
            assert kept == self.widths, criterion
            self.found[criterion] = plan
        return self.found[criterion]


def _table(found: dict, runs: list) -> list:
    rows = []
    for criterion in CRITERIA:
        mine = [r for r in runs if r["criterion"] == criterion]
        if not mine:
            continue
        plan = found[criterion]
        rows.append(
            {
                "criterion": criterion,
                "macs_reduction": plan.macs_reduction,
                "params_reduction": plan.params_reduction,
                **spread([r["accuracy"] for r in mine]),
                "pruned_mean": spread([r["pruned_accuracy"] for r in mine])["mean"],
            }
        )
    return rows


def accuracy_runs(args, teacher, train, test, base_accuracy, elapsed):
    x_cal, y_cal = next(
        iter(
            data.fashion_mnist(
                "train",
                batch_size=args.calibration_images,
                shuffle=False,
                augment=False,
            )
        )
    )
    found = Plans(args, teacher, (x_cal.numpy(), y_cal.numpy()))
    config = {
        "network": NETWORK,
        "params": hos_keras.profile(teacher)["params"],
        "macs": hos_keras.profile(teacher)["macs"],
        "baseline_accuracy": base_accuracy,
        "baseline_epochs": args.epochs,
        "baseline_seconds": elapsed,
        "finetune_epochs": args.finetune_epochs,
        "target_macs_reduction": args.target,
        "widths": "fixed allocation, ratio searched for the MACs target",
        "calibration": f"the first {args.calibration_images} training images",
        "finetuning": "HOSDistiller with the auxiliary losses (output_weight 1.0, "
        "automatic pivots), AdamW, cosine",
        "finetune_lr": args.finetune_lr,
        "batch_size": args.batch_size,
        "training_images": args.limit or 60000,
        "finetune_images_per_epoch": args.finetune_images,
    }
    out = args.out or os.path.join(RESULTS, "vit_accuracy.json")
    runs = Runs(out, config, lambda runs: _table(found, runs))
    for seed in range(args.seeds):
        for criterion in CRITERIA:
            if runs.done(seed=seed, criterion=criterion):
                continue
            plan = found[criterion]
            keras.utils.set_random_seed(seed)
            student = hos_keras.slim_model(teacher, plan)
            pruned = accuracy(student, test)
            seconds, pivots = finetuning.finetune(
                student,
                teacher,
                plan,
                train.take(args.finetune_images // args.batch_size),
                seed,
                args,
                optimizer=adamw,
            )
            final = accuracy(student, test)
            runs.add(
                seed=seed,
                criterion=criterion,
                pivots=pivots,
                pruned_accuracy=pruned,
                accuracy=final,
                seconds=seconds,
            )
            print(
                f"seed {seed} {criterion:<8} pruned {pruned:.4f} -> distilled "
                f"{final:.4f} ({seconds:.0f} s)",
                flush=True,
            )
    print(f"\nbaseline {base_accuracy:.4f}")
    for row in runs.write():
        print(
            f"{row['criterion']:<8}{row['macs_reduction']:>7.1%} fewer MACs "
            f"{row['pruned_mean']:.4f} -> {row['mean']:.4f} +- {row['std']:.4f}"
        )
    print(f"wrote {out}")


def _tflite_timer(model, path, threads=2):
    flat = hos_keras.export.to_tflite(model)
    hos_keras.files.write_bytes(path, flat)
    interpreter = hos_keras.export.interpreter(flat, threads)
    (detail,) = interpreter.get_input_details()
    x = np.random.default_rng(0).normal(size=detail["shape"]).astype("float32")

    def call():
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()

    return call


def _tf_timer(model):
    import tensorflow as tf

    function = tf.function(lambda x: model(x, training=False), jit_compile=False)
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 28, 28, 1)), tf.float32)
    return lambda: function(x)


def _interleaved(timers: dict, calls: int) -> dict:
    """Median and quartiles (ms) of single calls, the models taking turns."""
    times = {name: [] for name in timers}
    for call in timers.values():
        for _ in range(20):
            call()
    for _ in range(calls):
        for name, call in timers.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    result = {}
    for name, values in times.items():
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        result[name] = {"median_ms": median, "q1_ms": q1, "q3_ms": q3}
    return result


def speed(args, teacher):
    os.makedirs(args.cache_dir, exist_ok=True)
    by_macs = hos_keras.plan_pruning(
        teacher, "k34", "target", macs_reduction=args.target, base="fixed"
    )
    by_latency = hos_keras.plan_pruning(
        teacher,
        "l1",
        "target",
        latency_reduction=args.target,
        runtime="tflite",
        base="fixed",
    )
    models = {
        "teacher": teacher,
        "macs target": hos_keras.slim_model(teacher, by_macs),
        "latency target": hos_keras.slim_model(teacher, by_latency),
    }
    plans_by_name = {"macs target": by_macs, "latency target": by_latency}
    load_before = os.getloadavg()
    result = {
        "config": {
            "network": NETWORK,
            "target": args.target,
            "calls": args.calls,
            "batch_size": 1,
            "threads": 2,
        },
        "models": {},
    }
    for runtime, make in (
        (
            "tflite",
            lambda n, m: _tflite_timer(m, os.path.join(args.cache_dir, f"{n}.tflite")),
        ),
        ("tensorflow", lambda n, m: _tf_timer(m)),
    ):
        timers = {name: make(name.replace(" ", "_"), m) for name, m in models.items()}
        timed = _interleaved(timers, args.calls)
        for name, figures in timed.items():
            entry = result["models"].setdefault(name, {})
            entry[runtime] = {
                **figures,
                "speedup": timed["teacher"]["median_ms"] / figures["median_ms"],
            }
    for name, model in models.items():
        cost = hos_keras.profile(model)
        entry = result["models"][name]
        entry["macs"], entry["params"] = cost["macs"], cost["params"]
        if name in plans_by_name:
            entry["plan_details"] = plans_by_name[name].details
    result["machine"] = {**machine(), "load_before": load_before}
    out = args.out or os.path.join(RESULTS, "vit_speed.json")
    hos_keras.files.write_text(
        out, __import__("json").dumps(result, indent=1, default=float)
    )
    for name, entry in result["models"].items():
        print(
            f"{name:<15} MACs {entry['macs']:>10,}  tflite "
            f"{entry['tflite']['median_ms']:.3f} ms ({entry['tflite']['speedup']:.2f}x)"
            f"  tf {entry['tensorflow']['median_ms']:.3f} ms "
            f"({entry['tensorflow']['speedup']:.2f}x)"
        )
    print(f"wrote {out}")


def main():
    args = parse_args()
    train = data.fashion_mnist("train", batch_size=args.batch_size, limit=args.limit)
    test = data.fashion_mnist("test", batch_size=512)
    teacher, elapsed = train_baseline(args, train, test)
    if args.speed:
        speed(args, teacher)
        return
    base_accuracy = accuracy(teacher, test)
    print(f"baseline accuracy {base_accuracy:.4f}", flush=True)
    accuracy_runs(args, teacher, train, test, base_accuracy, elapsed)


if __name__ == "__main__":
    main()
