"""Accuracy kept at the same MACs: HOS criteria against l1 and random, with and
without the auxiliary reconstruction losses, on Fashion-MNIST.

One baseline ResNet-20 (widths 16-32-64, 28x28x1 inputs) is trained on the full
60,000 training images. One allocation - Shapiro-Wilk, coefficient searched for
50% fewer MACs - fixes how many channels every layer keeps; it does not depend on
the criterion, so every criterion prunes to exactly the same widths and MACs and
differs only in WHICH channels go. Each criterion's student is then fine-tuned for
the same number of epochs with the same optimizer, once with the output and pivot
losses against the teacher (HOSDistiller, auxiliary=True) and once with the task
loss only, for several seeds (data order; also the random criterion's draw).
Test accuracy on the 10,000 test images: mean and standard deviation.

With `--approaches`, the paper's three approaches at the same MACs instead
(docs/method.md#approaches-a1-a3), each fine-tuned with the auxiliary losses for the
same budget: A1 prunes with k34 to the target; A2 decomposes every 3x3 conv by Tucker-2
(HOOI) with the compression factor X bisected until the MACs fall by the target; A3
prunes with k34 to `--a3-prune` of the MACs, then decomposes with X bisected to the same
total. The student starts from the decomposed weights (the reconstruction of the
teacher's kernels); the distiller's pivots are the same block outputs, found by name.

With `--criteria`, the other criteria and allocations of the same literature
(docs/method.md#related-methods) on the same baseline and budget, each fine-tuned with
the auxiliary losses: the weight criteria fpgm and bn_scale, and the data-driven dfs,
sfs, fisher, taylor and activation_k34 (scored on 512 fixed training images), prune to
the very widths of the l1 reference row (Shapiro-Wilk target allocation, 50% fewer
MACs), so they differ only in which channels go; itpruner chooses its own widths at the
same MACs reduction (CKA of the layers' feature maps on the calibration images) and
keeps channels by l1. The runs are written one by one and a second call resumes where
the first stopped.

Run: .venv/bin/python bench/accuracy.py   (about 60 minutes on 2 CPU cores)
     .venv/bin/python bench/accuracy.py --approaches   (about 55 minutes, baseline
     training included; writes bench/results/accuracy_approaches.json)
     .venv/bin/python bench/accuracy.py --criteria   (about 2 hours with a cached
     baseline; writes bench/results/accuracy_criteria.json)
Writes bench/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import keras
import numpy as np
from finetuning import Runs, accuracy, copy, finetune, machine, sgd, spread

import hos_keras
from hos_keras import data, models

CRITERIA = ("k34", "abs_k34", "l1", "random")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=8, help="baseline epochs")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--target", type=float, default=0.5, help="MACs reduction")
    p.add_argument("--lr", type=float, default=0.05, help="baseline peak lr")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, help="training images (quick checks)")
    p.add_argument("--cache-dir", default="runs/bench_accuracy")
    p.add_argument("--out", help="results file (default: bench/results/accuracy.json)")
    p.add_argument(
        "--approaches",
        action="store_true",
        help="compare A1 (prune), A2 (decompose), A3 (prune+decompose) instead",
    )
    p.add_argument(
        "--criteria",
        action="store_true",
        help="compare the other criteria and itpruner at the same MACs instead",
    )
    p.add_argument("--calibration-images", type=int, default=512, help="for --criteria")
    p.add_argument(
        "--a3-prune", type=float, default=0.3, help="MACs A3 prunes before decomposing"
    )
    return p.parse_args()


def train_baseline(args, train, test):
    os.makedirs(args.cache_dir, exist_ok=True)
    path = os.path.join(args.cache_dir, f"baseline_e{args.epochs}.keras")
    if os.path.exists(path):
        print(f"reusing {path}")
        return keras.models.load_model(path), 0.0
    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(20, num_classes=10, input_shape=(28, 28, 1))
    model.compile(
        optimizer=sgd(args.lr, int(train.cardinality()) * args.epochs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(train, validation_data=test, epochs=args.epochs, verbose=2)
    elapsed = time.perf_counter() - start
    model.save(path)
    return model, elapsed


def approaches(args, teacher, train, test, base_accuracy, began):
    """A1, A2 and A3 at the same MACs, fine-tuned alike; writes the JSON."""
    macs = hos_keras.profile(teacher)["macs"]
    a1 = hos_keras.plan_pruning(
        teacher, "k34", "target", macs_reduction=args.target, base="shapiro"
    )
    a3_plan = hos_keras.plan_pruning(
        teacher, "k34", "target", macs_reduction=args.a3_prune, base="shapiro"
    )
    a3_slim = hos_keras.slim_model(teacher, a3_plan)
    a3_macs = hos_keras.profile(a3_slim)["macs"]
    a2_factor = hos_keras.factor_for_macs(teacher, args.target)
    a2_model = hos_keras.decompose(teacher, factor=a2_factor)
    a3_factor = hos_keras.factor_for_macs(
        a3_slim, 1 - (1 - args.target) * macs / a3_macs
    )
    a3_model = hos_keras.decompose(a3_slim, factor=a3_factor)
    students = {
        "A1 prune (k34)": (hos_keras.slim_model(teacher, a1), a1, None),
        "A2 decompose": (a2_model, None, a2_factor),
        "A3 prune + decompose": (a3_model, a3_plan, a3_factor),
    }
    costs = {name: hos_keras.profile(entry[0]) for name, entry in students.items()}
    for name, cost in costs.items():
        print(f"{name}: {1 - cost['macs'] / macs:.1%} fewer MACs", flush=True)
    runs = []
    for seed in range(args.seeds):
        for name, (model, plan, _) in students.items():
            keras.utils.set_random_seed(seed)
            student = copy(model)
            compressed = accuracy(student, test)
            seconds, pivots = finetune(student, teacher, plan, train, seed, args)
            final = accuracy(student, test)
            runs.append(
                {
                    "seed": seed,
                    "approach": name,
                    "pivots": pivots,
                    "compressed_accuracy": compressed,
                    "accuracy": final,
                    "seconds": seconds,
                }
            )
            print(
                f"seed {seed} {name:<22} compressed {compressed:.4f} -> fine-tuned "
                f"{final:.4f} ({seconds:.0f} s)",
                flush=True,
            )
    table = []
    for name, (_, plan, factor) in students.items():
        chosen = [r for r in runs if r["approach"] == name]
        values = np.array([r["accuracy"] for r in chosen])
        before = np.array([r["compressed_accuracy"] for r in chosen])
        table.append(
            {
                "approach": name,
                "tucker2_factor": factor,
                "pruned_macs_reduction": None if plan is None else plan.macs_reduction,
                "macs_reduction": 1 - costs[name]["macs"] / macs,
                "params": costs[name]["params"],
                **spread(values),
                "compressed_mean": float(before.mean()),
            }
        )
    result = {
        "config": {
            "network": "cifar_resnet(20) widths 16-32-64, 28x28x1",
            "baseline_epochs": args.epochs,
            "finetune_epochs": args.finetune_epochs,
            "seeds": args.seeds,
            "target_macs_reduction": args.target,
            "a3_pruned_macs_reduction": args.a3_prune,
            "pruning": "k34 criterion, target allocation (shapiro base)",
            "decomposition": "Tucker-2 (HOOI) of every 3x3 conv with >= 8 "
            "channels, the factor bisected to the MACs target",
            "finetuning": "HOSDistiller with the auxiliary losses (output_weight "
            "1.0, automatic pivots)",
            "finetune_lr": args.finetune_lr,
            "batch_size": args.batch_size,
            "training_images": args.limit or 60000,
            "optimizer": "SGD momentum 0.9 Nesterov, weight decay 5e-4, cosine",
        },
        "baseline_accuracy": base_accuracy,
        "params": hos_keras.profile(teacher)["params"],
        "macs": macs,
        "table": table,
        "runs": runs,
        "total_minutes": (time.perf_counter() - began) / 60,
        "machine": machine(),
    }
    out = args.out or os.path.join(RESULTS, "accuracy_approaches.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=1)
    print(f"\nbaseline {base_accuracy:.4f}")
    for row in table:
        print(
            f"{row['approach']:<22}{row['macs_reduction']:>8.1%} fewer MACs "
            f"{row['compressed_mean']:>8.4f} -> {row['mean']:.4f} +- {row['std']:.4f}"
        )
    print(f"total {result['total_minutes']:.1f} min; wrote {out}")


# Rows of --criteria: (label, criterion, allocation); "fixed" is the l1 row's widths.
OTHERS = (
    ("l1", "l1", "fixed"),
    ("fpgm", "fpgm", "fixed"),
    ("bn_scale", "bn_scale", "fixed"),
    ("dfs", "dfs", "fixed"),
    ("sfs", "sfs", "fixed"),
    ("fisher", "fisher", "fixed"),
    ("taylor", "taylor", "fixed"),
    ("activation_k34", "activation_k34", "fixed"),
    ("itpruner (l1)", "l1", "itpruner"),
)


def other_criteria(args, teacher, train, test, base_accuracy, began):
    """The OTHERS rows at the same MACs, fine-tuned alike; the JSON is rewritten
    after every run and the runs already in it are not repeated."""
    batches = data.fashion_mnist(
        "train", batch_size=args.calibration_images, shuffle=False
    )
    x_cal, y_cal = next(iter(batches))
    calibration = (x_cal.numpy(), y_cal.numpy())
    reference = hos_keras.plan_pruning(
        teacher, "l1", "target", macs_reduction=args.target, base="shapiro"
    )
    widths = {g: len(p.keep) for g, p in reference.groups.items()}
    plans = {}
    for label, criterion, allocation in OTHERS:
        start = time.perf_counter()
        if allocation == "fixed":
            ratios = {
                g: 1.0 - widths[g] / p.channels for g, p in reference.groups.items()
            }
            weights_only = criterion in ("l1", "fpgm", "bn_scale")
            plan = hos_keras.plan_pruning(
                teacher,
                criterion,
                "fixed",
                ratio=ratios,
                data=None if weights_only else calibration,
            )
            assert {g: len(p.keep) for g, p in plan.groups.items()} == widths, label
        else:
            plan = hos_keras.plan_pruning(
                teacher,
                criterion,
                allocation,
                macs_reduction=args.target,
                data=calibration,
            )
        plans[label] = (plan, time.perf_counter() - start)
        print(
            f"{label:<16} {plan.macs_reduction:.1%} fewer MACs, planned in "
            f"{plans[label][1]:.1f} s",
            flush=True,
        )
    out = args.out or os.path.join(RESULTS, "accuracy_criteria.json")
    config = {
        "network": "cifar_resnet(20) widths 16-32-64, 28x28x1",
        "baseline_accuracy": base_accuracy,
        "baseline_epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "target_macs_reduction": args.target,
        "widths": "l1 with the Shapiro-Wilk target allocation; itpruner its own",
        "calibration": f"the first {args.calibration_images} training images",
        "finetuning": "HOSDistiller with the auxiliary losses (output_weight 1.0, "
        "automatic pivots)",
        "finetune_lr": args.finetune_lr,
        "batch_size": args.batch_size,
        "training_images": args.limit or 60000,
        "optimizer": "SGD momentum 0.9 Nesterov, weight decay 5e-4, cosine",
    }
    runs = Runs(out, config, lambda runs: _criteria_table(plans, runs))
    for seed in range(args.seeds):
        for label, _, _ in OTHERS:
            if runs.done(seed=seed, row=label):
                continue
            plan = plans[label][0]
            keras.utils.set_random_seed(seed)
            student = hos_keras.slim_model(teacher, plan)
            pruned = accuracy(student, test)
            seconds, pivots = finetune(student, teacher, plan, train, seed, args)
            final = accuracy(student, test)
            runs.add(
                seed=seed,
                row=label,
                pivots=pivots,
                pruned_accuracy=pruned,
                accuracy=final,
                seconds=seconds,
            )
            print(
                f"seed {seed} {label:<16} pruned {pruned:.4f} -> fine-tuned "
                f"{final:.4f} ({seconds:.0f} s)",
                flush=True,
            )
    table = runs.write()
    print(f"\nbaseline {base_accuracy:.4f}")
    for row in table:
        print(
            f"{row['row']:<16}{row['macs_reduction']:>8.1%} fewer MACs "
            f"{row['pruned_mean']:>8.4f} -> {row['mean']:.4f} +- {row['std']:.4f} "
            f"(n={row['n']})"
        )
    print(f"wrote {out}")


def _criteria_table(plans, runs) -> list:
    table = []
    for label, criterion, allocation in OTHERS:
        plan = plans[label][0]
        chosen = [r for r in runs if r["row"] == label]
        values = np.array([r["accuracy"] for r in chosen])
        pruned = np.array([r["pruned_accuracy"] for r in chosen])
        table.append(
            {
                "row": label,
                "criterion": criterion,
                "allocation": allocation,
                "macs_reduction": plan.macs_reduction,
                "params": plan.params_after,
                "plan_seconds": plans[label][1],
                "widths": {g: len(p.keep) for g, p in plan.groups.items()},
                **spread(values),
                "pruned_mean": float(pruned.mean()) if len(pruned) else None,
            }
        )
    return table


def main():
    args = parse_args()
    began = time.perf_counter()
    train = data.fashion_mnist("train", batch_size=args.batch_size, limit=args.limit)
    test = data.fashion_mnist("test", batch_size=1000)
    teacher, baseline_seconds = train_baseline(args, train, test)
    base_accuracy = accuracy(teacher, test)
    print(f"baseline test accuracy {base_accuracy:.4f}")
    if args.approaches:
        return approaches(args, teacher, train, test, base_accuracy, began)
    if args.criteria:
        return other_criteria(args, teacher, train, test, base_accuracy, began)
    args.out = args.out or os.path.join(RESULTS, "accuracy.json")

    plans = {
        c: hos_keras.plan_pruning(
            teacher,
            criterion=c,
            allocation="target",
            macs_reduction=args.target,
            base="shapiro",
            seed=0,
        )
        for c in CRITERIA
    }
    widths = {
        c: {g: len(p.keep) for g, p in plan.groups.items()} for c, plan in plans.items()
    }
    assert all(w == widths["k34"] for w in widths.values()), "widths differ"
    macs = {c: plan.macs_after for c, plan in plans.items()}
    assert len(set(macs.values())) == 1, macs

    runs = []
    for seed in range(args.seeds):
        for criterion in CRITERIA:
            plan = plans[criterion]
            if criterion == "random":
                plan = hos_keras.plan_pruning(
                    teacher,
                    criterion="random",
                    allocation="target",
                    macs_reduction=args.target,
                    base="shapiro",
                    seed=seed,
                )
            for auxiliary in (True, False):
                keras.utils.set_random_seed(seed)
                student = hos_keras.slim_model(teacher, plan)
                pruned = accuracy(student, test)
                # output_weight=1.0 (finetune's): the weight
                # bench/results/accuracy.json was measured with (the distiller's
                # default is now the reference's 5 with pivot losses).
                seconds, pivots = finetune(
                    student, teacher, plan, train, seed, args, auxiliary=auxiliary
                )
                final = accuracy(student, test)
                runs.append(
                    {
                        "seed": seed,
                        "criterion": criterion,
                        "auxiliary": auxiliary,
                        "pivots": pivots,
                        "pruned_accuracy": pruned,
                        "accuracy": final,
                        "seconds": seconds,
                    }
                )
                print(
                    f"seed {seed} {criterion:<8} aux={auxiliary!s:<5} "
                    f"pruned {pruned:.4f} -> fine-tuned {final:.4f} ({seconds:.0f} s)",
                    flush=True,
                )

    table = []
    for criterion in CRITERIA:
        for auxiliary in (True, False):
            chosen = [
                r
                for r in runs
                if r["criterion"] == criterion and r["auxiliary"] == auxiliary
            ]
            values = np.array([r["accuracy"] for r in chosen])
            pruned = np.array([r["pruned_accuracy"] for r in chosen])
            table.append(
                {
                    "criterion": criterion,
                    "auxiliary": auxiliary,
                    **spread(values),
                    "pruned_mean": float(pruned.mean()),
                }
            )
    result = {
        "config": {
            "network": "cifar_resnet(20) widths 16-32-64, 28x28x1",
            "baseline_epochs": args.epochs,
            "finetune_epochs": args.finetune_epochs,
            "seeds": args.seeds,
            "target_macs_reduction": args.target,
            "allocation": "target (shapiro base), same widths for every criterion",
            "baseline_lr": args.lr,
            "finetune_lr": args.finetune_lr,
            "batch_size": args.batch_size,
            "training_images": args.limit or 60000,
            "optimizer": "SGD momentum 0.9 Nesterov, weight decay 5e-4, cosine",
        },
        "baseline_accuracy": base_accuracy,
        "baseline_seconds": baseline_seconds,
        "params": {
            "original": plans["k34"].params_before,
            "slim": plans["k34"].params_after,
        },
        "macs": {"original": plans["k34"].macs_before, "slim": plans["k34"].macs_after},
        "achieved_macs_reduction": plans["k34"].macs_reduction,
        "table": table,
        "runs": runs,
        "total_minutes": (time.perf_counter() - began) / 60,
        "machine": machine(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=1)
    print()
    print(f"baseline {base_accuracy:.4f}; {plans['k34'].macs_reduction:.1%} fewer MACs")
    print(f"{'criterion':<10}{'aux':>6}{'pruned':>9}{'fine-tuned (mean +- std)':>28}")
    for row in table:
        print(
            f"{row['criterion']:<10}{'yes' if row['auxiliary'] else 'no':>6}"
            f"{row['pruned_mean']:>9.4f}{row['mean']:>18.4f} +- {row['std']:.4f}"
        )
    print(f"total {result['total_minutes']:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
