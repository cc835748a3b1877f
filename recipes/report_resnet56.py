"""Per-layer HOS statistics and planned pruning ratios of a CIFAR ResNet-56.

The report the paper's method starts from: for every prunable convolution, the
layer statistics of the three statistic allocations (Shapiro-Wilk W, -log10 JB,
-log10 |k3 k4|), the ratio each allocation gives it, and a plan that removes about
half of the MACs.

Without --weights the network has its fresh (He-normal) initialization, whose
weights are nearly Gaussian by construction; pass a trained model to see the
statistics of real filters.

Run: bash run.sh demo [--weights MODEL.keras] [--coefficient 3.7] [--target 0.5]
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

import hos_keras


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="a .keras model or .weights.h5 file")
    parser.add_argument("--depth", type=int, default=56, help="6n+2; default 56")
    parser.add_argument(
        "--coefficient",
        type=float,
        default=3.7,
        help="eq. 9 coefficient c (paper: 3.7 for ResNet-56)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=0.5,
        help="MACs reduction of the target plan; default 0.5",
    )
    parser.add_argument("--criterion", default="k34", help="filter criterion")
    parser.add_argument("--plan-out", help="write the target plan as JSON here")
    return parser.parse_args()


def load_model(args) -> keras.Model:
    if args.weights and args.weights.endswith(".keras"):
        return keras.models.load_model(args.weights)
    keras.utils.set_random_seed(0)
    model = hos_keras.models.cifar_resnet(depth=args.depth, num_classes=10)
    if args.weights:
        model.load_weights(args.weights)
    return model


def main() -> None:
    args = parse_args()
    model = load_model(args)
    cost = hos_keras.profile(model)
    print(
        f"{model.name}: {cost['params']:,} parameters, {cost['macs']:,} MACs "
        "per 32x32 image"
    )

    plans = {}
    start = time.perf_counter()
    for allocation in ("shapiro", "jarque_bera", "k34"):
        plans[allocation] = hos_keras.plan_pruning(
            model,
            criterion=args.criterion,
            allocation=allocation,
            coefficient=args.coefficient,
        )
    elapsed = time.perf_counter() - start

    header = (
        f"{'layer':<22}{'ch':>4}{'W':>9}{'r_W':>6}{'-lgJB':>9}{'r_JB':>6}"
        f"{'-lg|k34|':>10}{'r_k34':>7}"
    )
    print()
    print(f"Layer statistics and eq. 9 ratios (c = {args.coefficient}):")
    print(header)
    print("-" * len(header))
    for name, entry in plans["shapiro"].groups.items():
        jb, k34 = plans["jarque_bera"][name], plans["k34"][name]
        print(
            f"{name:<22}{entry.channels:>4}{entry.statistic:>9.5f}"
            f"{entry.ratio:>6.1f}{jb.statistic:>9.3f}{jb.ratio:>6.1f}"
            f"{k34.statistic:>10.3f}{k34.ratio:>7.1f}"
        )
    print("-" * len(header))
    for allocation, plan in plans.items():
        print(
            f"{allocation:<12} MACs -{plan.macs_reduction:6.1%}  "
            f"params -{plan.params_reduction:6.1%}"
        )
    print(f"(three plans in {elapsed:.2f} s)")

    target = hos_keras.plan_pruning(
        model,
        criterion=args.criterion,
        allocation="target",
        macs_reduction=args.target,
        base="shapiro",
    )
    print()
    print(
        f"Target: {args.target:.0%} fewer MACs -> coefficient "
        f"{target.details['coefficient']:.3f}"
    )
    target.summary()

    small = hos_keras.slim_model(model, target)
    masked = hos_keras.mask_model(model, target)
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    reference = keras.ops.convert_to_numpy(masked(images))
    gap = np.max(np.abs(keras.ops.convert_to_numpy(small(images)) - reference))
    gap /= np.max(np.abs(reference))
    print(
        f"slim model: {small.count_params():,} parameters, "
        f"{hos_keras.profile(small)['macs']:,} MACs; "
        f"max |slim - masked| / max |masked| on 4 images = {gap:.1e}"
    )
    if args.plan_out:
        with open(args.plan_out, "w", encoding="utf-8") as handle:
            handle.write(target.to_json(indent=1))
        print(f"plan written to {args.plan_out}")


if __name__ == "__main__":
    main()
