"""What every recipe shares: its flags, the baseline, and the compress-and-report step.

A recipe names its dataset, network and the paper's settings; this module trains
(or reloads) the baseline and runs `hos_keras.compress` with those settings, then
saves the slim model, plan, report and a PNG of the per-layer ratios.

The paper recipes' distillation decays the learning rate x0.1 at the epochs a
recipe gives as `distill_decay_epochs`, as the reference's MultiStepLR does
(chatzikon/DNN-COMPRESSION at ab38a4a, cifar/step3/main_finetune_dimen_mult_loss.py
lines 656 and 660: milestones 80 and 120 of its 140 epochs, line 35). They are the
epochs of the recipe's full run; with fewer `--distill-epochs` they are scaled in
proportion (80 and 120 of 140 become 8 and 12 of 14), and the recipe says so.
The reference calls `scheduler.step(epoch)` after each epoch (lines 758 and 762),
which with torch's closed form lands each drop one epoch late (from epoch 81 and
121); the recipes drop at the milestones themselves, as MultiStepLR is meant to.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

# A recipe starts quietly: importing hos_keras first hides TensorFlow's C++
# startup lines (unless --verbose).
_QUIET = "HOS_KERAS_QUIET" not in os.environ
if _QUIET:
    os.environ["HOS_KERAS_QUIET"] = "1"
import hos_keras  # noqa: I001 - before keras, which imports TensorFlow
import keras

if _QUIET:  # not inherited by the processes a recipe (or a test) starts
    del os.environ["HOS_KERAS_QUIET"]

from hos_keras import data, files, models, training
from hos_keras.text import plural

# The paper's CIFAR schedule, from the authors' code (see cifar10_resnet56.py):
# 140 epochs of distillation at 1e-3 with x0.1 at epochs 80 and 120, then 30 of
# fine-tuning at 1e-4 without Nesterov; block-inner pruning; and hos_keras's own
# baseline training (160 epochs, cosine from 0.1).
PAPER_CIFAR = {
    "epochs": 160,
    "lr": 0.1,
    "batch_size": 64,
    "distill_epochs": 140,
    "distill_lr": 1e-3,
    "distill_decay_epochs": (80, 120),
    "finetune_epochs": 30,
    "finetune_lr": 1e-4,
    "finetune_nesterov": False,
    "scope": "inner",
}


def parser(description: str, **defaults) -> argparse.ArgumentParser:
    """The recipe flags; `defaults` sets the recipe's own values.

    Besides the flags' values, `defaults` may hold `distill_decay_epochs` (the
    epochs of the full `distill_epochs` run where the distillation's learning
    rate drops x0.1; none by default) and `finetune_nesterov` (Nesterov momentum
    for the fine-tuning; True by default).
    """
    p = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-dir", help="dataset directory (tfds data_dir / IDX files)")
    p.add_argument(
        "--download",
        action="store_true",
        help="download and prepare a tensorflow-datasets dataset missing from "
        "--data-dir (network access; without it a missing dataset stops at once)",
    )
    p.add_argument("--output-dir", help="where the models and the report go")
    p.add_argument("--epochs", type=int, help="baseline training epochs")
    p.add_argument("--lr", type=float, help="baseline peak learning rate")
    p.add_argument(
        "--distill-epochs",
        type=int,
        help="epochs with auxiliary losses (learning-rate decay epochs scale with it)",
    )
    p.add_argument("--finetune-epochs", type=int, help="epochs without them")
    p.add_argument("--distill-lr", type=float, help="distillation learning rate")
    p.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument(
        "--macs-reduction",
        type=float,
        help="fraction of MACs to remove (searches c); giving --coefficient "
        "replaces the recipe's target",
    )
    p.add_argument("--target", type=float, help="deprecated name of --macs-reduction")
    p.add_argument("--coefficient", type=float, help="eq. 9 coefficient c")
    p.add_argument("--criterion", help="filter criterion")
    p.add_argument(
        "--scope",
        choices=["all", "inner", "conv"],
        help="groups that may be pruned (inner: no channel crossing a residual "
        "merge, the paper's scope)",
    )
    p.add_argument("--skip", nargs="*", metavar="PATTERN", help="layers never pruned")
    p.add_argument(
        "--approach",
        choices=["prune", "decompose", "prune+decompose"],
        default="prune",
        help="the paper's A1 (prune), A2 (Tucker-2 decomposition only) or A3 "
        "(prune, then decompose)",
    )
    p.add_argument(
        "--decompose-factor",
        type=float,
        default=1.71,
        help="compression factor of each decomposed conv (1.71: the reference's)",
    )
    p.add_argument("--steps", type=int, help="batches per epoch (quick runs)")
    p.add_argument(
        "--latency-runs", type=int, help="timed calls per model (0: no timing)"
    )
    p.add_argument("--baseline", help="a trained .keras model to compress instead")
    p.add_argument("--retrain", action="store_true", help="ignore a saved baseline")
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the interrupted compress run recorded in --output-dir "
        "(same flags); without it a new run replaces the record",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's startup messages (hidden by default)",
    )
    p.set_defaults(
        **{
            "criterion": "k34",
            "scope": "all",
            "skip": [],
            "latency_runs": 20,
            "distill_decay_epochs": (),
            "finetune_nesterov": True,
            "full_distill_epochs": defaults.get("distill_epochs"),
            # To tell a pruning flag the user gave from the recipe's own value.
            "recipe_defaults": dict(defaults),
            **defaults,
        }
    )
    return p


def progress() -> int:
    """Keras verbosity: a progress bar with an ETA on a terminal, else one line
    per epoch (logs and CI)."""
    return 1 if sys.stdout.isatty() else 2


def limited(dataset, steps):
    """The first `steps` batches of a dataset (all of it when steps is None);
    for datasets without a cache (ImageNet's)."""
    return dataset.take(steps) if steps else dataset


def limit(args, batch_size: int | None = None) -> int | None:
    """The examples `--steps` batches hold, for the data functions' `limit`
    (applied before their cache, which a partial read would discard with a
    warning at every epoch); `None` without `--steps`."""
    return args.steps * (batch_size or args.batch_size) if args.steps else None


def decay_epochs(milestones, full_epochs: int, epochs: int) -> tuple[int, ...]:
    """The decay epochs `milestones` of a `full_epochs` run, scaled to `epochs`.

    Each becomes round(m * epochs / full_epochs), at least 1, so a shorter run
    decays at the same fractions of its length.
    """
    return tuple(max(1, round(m * epochs / full_epochs)) for m in milestones)


def step_decay(lr: float, milestones, factor: float = 0.1):
    """epoch -> lr * factor ** (number of milestones <= epoch).

    PyTorch's MultiStepLR(milestones, gamma=factor) stepped once per epoch: with
    milestones (80, 120), epochs 0-79 train at lr, 80-119 at lr/10, then lr/100.
    """

    def rate(epoch: int) -> float:
        return lr * factor ** sum(epoch >= m for m in milestones)

    return rate


def _distill_schedule(args):
    """The distillation's epoch -> learning rate, or None for a constant rate."""
    if not args.distill_decay_epochs:
        return None
    milestones = decay_epochs(
        args.distill_decay_epochs, args.full_distill_epochs, args.distill_epochs
    )
    scaled = ""
    if args.distill_epochs != args.full_distill_epochs:
        scaled = (
            f" (epochs {list(args.distill_decay_epochs)} of "
            f"{args.full_distill_epochs}, scaled to {args.distill_epochs})"
        )
    print(
        f"[recipe] distillation lr {args.distill_lr:g}, x0.1 at epochs "
        f"{list(milestones)}{scaled}"
    )
    return step_decay(args.distill_lr, milestones)


def baseline(build, train, val, args) -> keras.Model:
    """Loads output_dir/baseline.keras, or trains the network and saves it there."""
    os.makedirs(args.output_dir, exist_ok=True)
    if args.baseline:
        print(f"[recipe] compressing {args.baseline}")
        return keras.models.load_model(args.baseline)
    path = os.path.join(args.output_dir, "baseline.keras")
    if os.path.exists(path) and not args.retrain:
        print(f"[recipe] reusing the baseline in {path} (--retrain to train anew)")
        return keras.models.load_model(path)
    # A new baseline starts a new compress run: the old run's record would
    # refuse it (another model), and resuming it would mix two runs.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(args.output_dir, "progress.json"))
    keras.utils.set_random_seed(args.seed)
    model = build()
    steps = int(train.cardinality())
    model.compile(
        optimizer=training.sgd(
            args.lr,
            steps=steps * args.epochs if steps > 0 and args.epochs > 0 else None,
            weight_decay=5e-4,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(
        f"[recipe] training the baseline {model.name} for "
        f"{plural(args.epochs, 'epoch')}"
    )
    model.fit(
        train,
        validation_data=val,
        epochs=args.epochs,
        verbose=progress(),
        shuffle=False,
    )
    files.save_model(model, path)
    return model


def macs_reduction(args) -> float | None:
    """--macs-reduction, or the deprecated --target (with a warning on stderr)."""
    if args.target is not None:
        print(
            f"[recipe] --target is deprecated; use --macs-reduction {args.target:g}",
            file=sys.stderr,
        )
        return args.target
    return args.macs_reduction


def _pruning_amount(args) -> dict:
    """`macs_reduction` or `coefficient`, whichever the user gave (a flag given on
    the command line replaces the recipe's own default of the other)."""
    defaults = args.recipe_defaults
    reduction = macs_reduction(args)

    def given(key, value):
        return value is not None and value != defaults.get(key)

    if given("macs_reduction", reduction) and given("coefficient", args.coefficient):
        raise SystemExit(
            "[recipe] --macs-reduction and --coefficient exclude each other: "
            "--macs-reduction searches the coefficient for a share of MACs. Give one."
        )
    if given("coefficient", args.coefficient):
        return {"allocation_options": {"coefficient": args.coefficient}}
    if reduction is not None:
        return {"macs_reduction": reduction}
    if args.coefficient is not None:
        return {"allocation_options": {"coefficient": args.coefficient}}
    return {}


def compress_and_report(model, train, val, args, allocation: str = "shapiro"):
    """Runs hos_keras.compress with the recipe's settings, as a `PruningSpec`
    and a `TrainingSpec`; saves and prints."""
    keras.utils.set_random_seed(args.seed)
    amount = _pruning_amount(args)
    pruning = None
    if args.approach == "decompose":
        # The recipe's pruning settings do not apply to a decomposition alone.
        given = [
            k
            for k, v in (
                ("macs-reduction", amount.get("macs_reduction")),
                (
                    "coefficient",
                    amount.get("allocation_options", {}).get("coefficient"),
                ),
            )
            if v is not None and v != args.recipe_defaults.get(k.replace("-", "_"))
        ]
        if given:
            raise SystemExit(
                f"[recipe] --{given[0]} prunes; with --approach decompose nothing "
                "is pruned. Use --approach prune+decompose, or drop it."
            )
    else:
        pruning = hos_keras.PruningSpec(
            criterion=args.criterion,
            allocation=allocation,
            scope=args.scope,
            skip=args.skip,
            **amount,
        )
    training_spec = hos_keras.TrainingSpec(
        distill_epochs=args.distill_epochs,
        finetune_epochs=args.finetune_epochs,
        distill_optimizer=training.sgd(args.distill_lr),
        distill_lr_schedule=_distill_schedule(args),
        finetune_optimizer=training.sgd(
            args.finetune_lr, nesterov=args.finetune_nesterov
        ),
    )
    if not args.resume:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(args.output_dir, "progress.json"))
    slim, report = hos_keras.compress(
        model,
        train,
        val,
        pruning=pruning,
        training=training_spec,
        approach=args.approach,
        decompose_factor=args.decompose_factor,
        latency_batch_sizes=(1, 32) if args.latency_runs else (),
        latency_runs=args.latency_runs,
        output_dir=args.output_dir,
        verbose=progress(),
    )
    if args.approach == "decompose":
        print(
            f"[recipe] saved {os.path.join(args.output_dir, 'slim.keras')} and "
            "report.json"
        )
        return slim, report
    plot = os.path.join(args.output_dir, "layers.png")
    report.plot(plot)
    report.plot_stages(os.path.join(args.output_dir, "stages.png"))
    print(
        f"[recipe] saved {os.path.join(args.output_dir, 'slim.keras')}, plan.json, "
        f"report.json, {plot} and stages.png"
    )
    return slim, report


def cifar(args, dataset: str, build):
    """A CIFAR recipe's whole run: the dataset from tensorflow-datasets, the
    baseline `build()` makes (or the saved one), then compress and report with
    the Shapiro-Wilk allocation.

    Args:
        args: The recipe's parsed flags (see `parser`).
        dataset: `"cifar10"` or `"cifar100"` (a `hos_keras.data` function).
        build: Makes the untrained network.
    """
    load = getattr(data, dataset)
    kwargs = {
        "data_dir": args.data_dir,
        "batch_size": args.batch_size,
        "download": args.download,
        "limit": limit(args),
    }
    train = load("train", seed=args.seed, **kwargs)
    test = load("test", **kwargs)
    model = baseline(build, train, test, args)
    return compress_and_report(model, train, test, args, allocation="shapiro")


def fashion_mnist_resnet20(args, images: int | None = None):
    """The Fashion-MNIST recipes' data (the first `images` training images, all
    by default; `--steps` limits further) and their ResNet-20 baseline (trained,
    or the saved one).

    Returns:
        `(train, test, model)`.
    """
    steps = limit(args)
    if images is not None:
        steps = min(images, steps) if steps else images
    train = data.fashion_mnist(
        "train",
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=steps,
    )
    test = data.fashion_mnist(
        "test", data_dir=args.data_dir, batch_size=500, limit=limit(args, 500)
    )
    model = baseline(
        lambda: models.cifar_resnet(20, num_classes=10, input_shape=(28, 28, 1)),
        train,
        test,
        args,
    )
    return train, test, model
