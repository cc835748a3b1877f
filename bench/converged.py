"""Accuracy kept on a converged baseline: HOS ranking against l1 and random once the
network is trained, and what batch-norm recalibration and sparse training add.

Two parts, each writing its own JSON, each within the machine's budget:

  --part baseline   trains a Fashion-MNIST ResNet-20 (widths 16-32-64, 28x28x1)
                    with SGD (Nesterov, weight decay 5e-4), one warm-up epoch and a
                    cosine decay, evaluating the test set after every epoch, and
                    keeps it in bench/models/ (so later runs do not retrain it);
                    records each layer's Shapiro-Wilk W before and after training.
                    Writes bench/results/converged_baseline.json.
  --part criteria   on that baseline, at the widths of one plan (Shapiro-Wilk target
                    allocation, 50% fewer MACs, the same for every criterion):
                    signed k34, abs_k34, l1 and random, each fine-tuned with the
                    auxiliary losses for the same budget; then the best of them
                    with batch-norm recalibration before fine-tuning, and with
                    sparse training first (GroupSparsity on the baseline, then the
                    same widths). Accuracy right after pruning is reported with and
                    without recalibration for every row. 3 seeds; the runs are
                    written one by one and a second call resumes.
                    Writes bench/results/converged_criteria.json.

Run:  .venv/bin/python bench/converged.py --part baseline   (--epochs, default 15)
      .venv/bin/python bench/converged.py --part criteria
Training throughput is measured in the first epoch and printed with the time the
rest will take. The budget follows from it: the baseline trains at about 420
images/s on 2 cores (2.4 min per epoch, 15 epochs in about 36 min); the criteria
part has 18 fine-tuning runs and 3 sparse-training epochs, so one fine-tuning
epoch per run (--finetune-epochs 1, about 3 min with the teacher's forward pass)
keeps it near an hour, and two would not fit 100 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import keras
import numpy as np
from finetuning import Runs, accuracy, finetune, machine, sgd, spread

import hos_keras
from hos_keras import data, models, training

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
BASELINE = os.path.join(HERE, "models", "fmnist_resnet20_converged.keras")
CRITERIA = ("k34", "abs_k34", "l1", "random")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("baseline", "criteria"), required=True)
    p.add_argument("--epochs", type=int, default=15, help="baseline epochs")
    p.add_argument("--lr", type=float, default=0.1, help="baseline peak lr")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--sparse-epochs", type=int, default=1)
    p.add_argument("--sparse-strength", type=float, default=1e-2)
    p.add_argument("--recalibration-steps", type=int, default=4)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--target", type=float, default=0.5, help="MACs reduction")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, help="training images (quick checks)")
    p.add_argument("--model", default=BASELINE, help="the baseline .keras file")
    p.add_argument("--out", help="results file")
    return p.parse_args()


def layer_normality(model) -> dict:
    """Shapiro-Wilk W of every convolution's weights."""
    return {
        layer.name: hos_keras.shapiro_wilk(layer.kernel.numpy())
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    }


class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warm` steps, then cosine decay to 0."""

    def __init__(self, peak, warm, total):
        self.peak, self.warm, self.total = peak, warm, total
        self.cosine = keras.optimizers.schedules.CosineDecay(peak, total - warm)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rising = self.peak * (step + 1) / self.warm
        return keras.ops.where(step < self.warm, rising, self.cosine(step - self.warm))

    def get_config(self):
        return {"peak": self.peak, "warm": self.warm, "total": self.total}


def train_baseline(args, train, test):
    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(20, num_classes=10, input_shape=(28, 28, 1))
    initial = layer_normality(model)
    steps = int(train.cardinality())
    model.compile(
        optimizer=keras.optimizers.SGD(
            Warmup(args.lr, steps, steps * args.epochs),
            momentum=0.9,
            nesterov=True,
            weight_decay=5e-4,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    curve = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        began = time.perf_counter()
        model.fit(train, epochs=1, verbose=0)
        seconds = time.perf_counter() - began
        curve.append({"epoch": epoch + 1, "test_accuracy": accuracy(model, test)})
        images = steps * args.batch_size
        print(
            f"epoch {epoch + 1}: test {curve[-1]['test_accuracy']:.4f} "
            f"({images / seconds:.0f} images/s; about "
            f"{(args.epochs - epoch - 1) * seconds / 60:.0f} min left)",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.model), exist_ok=True)
    plain = type(model).from_config(model.get_config())  # no optimizer state
    plain.set_weights(model.get_weights())
    plain.save(args.model)
    result = {
        "config": {
            "network": "cifar_resnet(20) widths 16-32-64, 28x28x1",
            "epochs": args.epochs,
            "schedule": f"SGD Nesterov 0.9, weight decay 5e-4, 1 warm-up epoch to "
            f"{args.lr}, cosine to 0",
            "batch_size": args.batch_size,
            "training_images": args.limit or 60000,
            "seed": 0,
        },
        "test_accuracy": curve[-1]["test_accuracy"],
        "curve": curve,
        "minutes": (time.perf_counter() - start) / 60,
        "shapiro_w": {
            name: {"initial": initial[name], "trained": w}
            for name, w in layer_normality(model).items()
        },
        "model": os.path.relpath(args.model, os.path.dirname(HERE)),
        "machine": machine(),
    }
    out = args.out or os.path.join(RESULTS, "converged_baseline.json")
    with open(out, "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=1)
    print(f"baseline {result['test_accuracy']:.4f}; wrote {out} and {args.model}")


def sparse_trained(args, teacher, criterion, train, seed):
    """A copy of the baseline after `--sparse-epochs` of GroupSparsity."""
    keras.utils.set_random_seed(seed)
    return training.sparse_trained(
        teacher,
        train.shuffle(64, seed=seed),
        args.sparse_epochs,
        hos_keras.GroupSparsity(criterion, strength=args.sparse_strength),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=sgd(args.finetune_lr, int(train.cardinality()) * args.sparse_epochs),
    )


def criteria(args, train, test):
    teacher = keras.models.load_model(args.model)
    base_accuracy = accuracy(teacher, test)
    print(f"baseline {base_accuracy:.4f} ({args.model})")
    reference = hos_keras.plan_pruning(
        teacher, "k34", "target", macs_reduction=args.target, base="shapiro"
    )
    ratios = {g: 1.0 - len(p.keep) / p.channels for g, p in reference.groups.items()}
    widths = {g: len(p.keep) for g, p in reference.groups.items()}

    def plan_for(model, criterion, seed):
        plan = hos_keras.plan_pruning(
            model, criterion, "fixed", ratio=ratios, seed=seed
        )
        assert {g: len(p.keep) for g, p in plan.groups.items()} == widths
        return plan

    # The same images for every recalibration (the training pipeline shuffles).
    batches = list(train.take(args.recalibration_steps))
    recalibration = tuple(np.concatenate([b[i] for b in batches]) for i in (0, 1))
    out = args.out or os.path.join(RESULTS, "converged_criteria.json")
    config = {
        "baseline": os.path.relpath(args.model, os.path.dirname(HERE)),
        "baseline_accuracy": base_accuracy,
        "target_macs_reduction": args.target,
        "macs_reduction": reference.macs_reduction,
        "widths": "k34 with the Shapiro-Wilk target allocation, for every row",
        "finetune_epochs": args.finetune_epochs,
        "finetune_lr": args.finetune_lr,
        "finetuning": "HOSDistiller with the auxiliary losses (output_weight 1.0)",
        "recalibration": f"{args.recalibration_steps} training batches of "
        f"{args.batch_size}",
        "sparse": f"{args.sparse_epochs} epoch(s) of GroupSparsity(group_norm, "
        f"strength {args.sparse_strength}) on the baseline, SGD cosine from "
        f"{args.finetune_lr}",
        "batch_size": args.batch_size,
        "training_images": args.limit or 60000,
    }
    runs = Runs(out, config, summarize)

    def done(row, seed):
        return runs.done(row=row, seed=seed)

    def record(row, seed, **values):
        runs.add(row=row, seed=seed, **values)
        print(
            f"seed {seed} {row:<22} "
            + ", ".join(
                f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)
            ),
            flush=True,
        )

    def pruned_and_tuned(source, criterion, seed, recalibrate_first=False):
        """Prunes `source` to the shared widths and fine-tunes the student
        against the baseline; the accuracy right after pruning, after batch-norm
        recalibration (of the student itself with `recalibrate_first`, else of
        a twin) and after fine-tuning."""
        keras.utils.set_random_seed(seed)
        plan = plan_for(source, criterion, seed)
        student = hos_keras.slim_model(source, plan)
        pruned = accuracy(student, test)
        twin = student if recalibrate_first else hos_keras.slim_model(source, plan)
        hos_keras.recalibrate_batchnorm(twin, recalibration, batch_size=args.batch_size)
        recalibrated = accuracy(twin, test)
        seconds, pivots = finetune(student, teacher, plan, train, seed, args)
        return {
            "pruned_accuracy": pruned,
            "recalibrated_accuracy": recalibrated,
            "accuracy": accuracy(student, test),
            "seconds": seconds,
            "pivots": pivots,
        }

    for seed in range(args.seeds):
        for criterion in CRITERIA:
            if not done(criterion, seed):
                record(criterion, seed, **pruned_and_tuned(teacher, criterion, seed))
    best = max(
        CRITERIA,
        key=lambda c: np.mean(
            [r["accuracy"] for r in runs.runs if r["row"] == c] or [0.0]
        ),
    )
    for seed in range(args.seeds):
        row = f"{best} + recalibration"
        if not done(row, seed):
            record(row, seed, **pruned_and_tuned(teacher, best, seed, True))
        row = f"{best} + sparse training"
        if not done(row, seed):
            start = time.perf_counter()
            sparse = sparse_trained(args, teacher, best, train, seed)
            sparse_seconds = time.perf_counter() - start
            record(
                row,
                seed,
                sparse_accuracy=accuracy(sparse, test),
                **pruned_and_tuned(sparse, best, seed),
                sparse_seconds=sparse_seconds,
            )
    table = runs.write()
    print(f"\nbaseline {base_accuracy:.4f}; {reference.macs_reduction:.1%} fewer MACs")
    for row in table:
        print(
            f"{row['row']:<28}{row['pruned_mean']:>8.4f}{row['recalibrated_mean']:>8.4f}"
            f" -> {row['mean']:.4f} +- {row['std']:.4f} (n={row['n']})"
        )
    print(f"wrote {out}")


def summarize(runs) -> list:
    """One row per benchmark row: mean and spread over the seeds."""
    table = []
    for row in dict.fromkeys(r["row"] for r in runs):
        chosen = [r for r in runs if r["row"] == row]

        def mean(key, chosen=chosen):
            return float(np.mean([r[key] for r in chosen]))

        values = np.array([r["accuracy"] for r in chosen])
        table.append(
            {
                "row": row,
                "pruned_mean": mean("pruned_accuracy"),
                "recalibrated_mean": mean("recalibrated_accuracy"),
                **spread(values),
            }
        )
    return table


def main():
    args = parse_args()
    train = data.fashion_mnist("train", batch_size=args.batch_size, limit=args.limit)
    test = data.fashion_mnist("test", batch_size=1000)
    if args.part == "baseline":
        train_baseline(args, train, test)
    else:
        criteria(args, train, test)


if __name__ == "__main__":
    main()
