"""Search the HOS pruning thresholds of a Fashion-MNIST ResNet-20 with KerasTuner.

Instead of hand-tuning the eq. 9 coefficient per network as the paper does, a
tuner picks c, the criterion, the auxiliary-loss weights and the learning rate
under a MACs budget (--macs-reduction: fraction of MACs to remove). Trials over the
budget are rejected untrained. The baseline is the demo's
(runs/fashion_mnist_resnet20/baseline.keras) when it exists, else trained here.
Results resume from --output-dir (run again with more --trials to continue).
"""

# isort: off
import recipe_common as common  # first: it starts TensorFlow quietly
# isort: on

import json
import os

import keras_tuner

from hos_keras import PruningSpec, TrainingSpec, files
from hos_keras.tuner import HOSHyperModel

TUNERS = {
    "random": keras_tuner.RandomSearch,
    "bayesian": keras_tuner.BayesianOptimization,
    "hyperband": keras_tuner.Hyperband,
}


def main(argv=None):
    parser = common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/tune_fashion_mnist",
        baseline="runs/fashion_mnist_resnet20/baseline.keras",
        epochs=3,
        lr=0.05,
        batch_size=128,
        distill_epochs=1,
        finetune_epochs=1,
        macs_reduction=0.5,
    )
    parser.add_argument("--trials", type=int, default=6, help="number of trials")
    parser.add_argument("--tuner", choices=sorted(TUNERS), default="random")
    parser.add_argument("--limit", type=int, default=10000, help="training images")
    args = parser.parse_args(argv)
    if args.baseline and not os.path.exists(args.baseline):
        args.baseline = None  # train one below
    train, test, model = common.fashion_mnist_resnet20(args, images=args.limit)
    hypermodel = HOSHyperModel(
        model,
        pruning=PruningSpec(macs_reduction=common.macs_reduction(args)),
        training=TrainingSpec(
            distill_epochs=args.distill_epochs, finetune_epochs=args.finetune_epochs
        ),
        coefficient=(1.0, 6.0),
        criterion=["k34", "abs_k34"],
    )
    options = {"max_epochs": 2} if args.tuner == "hyperband" else {}
    if args.tuner != "hyperband":
        options["max_trials"] = args.trials
    tuner = TUNERS[args.tuner](
        hypermodel,
        objective=hypermodel.objective,
        directory=args.output_dir,
        project_name=f"hos_{args.tuner}",
        overwrite=False,
        seed=args.seed,
        **options,
    )
    tuner.search(train, validation_data=test, verbose=common.progress())

    rows = []
    for trial in tuner.oracle.get_best_trials(len(tuner.oracle.trials)):
        metric = trial.metrics.get_last_value
        values = trial.hyperparameters.values
        rows.append(
            {
                "trial": trial.trial_id,
                "coefficient": values.get("coefficient"),
                "criterion": values.get("criterion"),
                "output_weight": values.get("output_weight"),
                "decay": values.get("decay"),
                "learning_rate": values.get("learning_rate"),
                "macs_reduction": metric("macs_reduction"),
                "val_accuracy": metric("val_accuracy")
                if trial.metrics.exists("val_accuracy")
                else None,
                "score": metric("hos_score"),
            }
        )
    print(
        f"{'trial':<6}{'c':>6}{'criterion':>10}{'w_out':>7}{'decay':>7}{'lr':>9}"
        f"{'MACs -':>8}{'val acc':>9}"
    )
    for r in rows:
        accuracy = (
            "rejected" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        )
        print(
            f"{r['trial']:<6}{r['coefficient']:>6.2f}{r['criterion']:>10}"
            f"{r['output_weight']:>7.2f}{r['decay']:>7.2f}{r['learning_rate']:>9.2g}"
            f"{r['macs_reduction']:>8.1%}{accuracy:>9}"
        )
    student = hypermodel.best_student(tuner)
    path = os.path.join(args.output_dir, "best_student.keras")
    files.save_model(student, path)
    files.write_text(
        os.path.join(args.output_dir, "trials.json"), json.dumps(rows, indent=1)
    )
    print(f"best student saved to {path}; all trials in trials.json")
    return student, rows


if __name__ == "__main__":
    main()
