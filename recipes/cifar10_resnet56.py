"""CIFAR-10 ResNet-56 with the paper's settings (Chatzikonstantinou et al. 2020).

Baseline: 160 epochs of SGD (Nesterov, cosine from 0.1, weight decay 5e-4).
Compression: k3*k4 filter ranking, Shapiro-Wilk allocation with c = 3.7 (the
paper's value for ResNet-56), 140 epochs of distillation with the output and two
pivot losses (blocks 9 and 18) at lr 1e-3, then 30 epochs at 1e-4 without them.
Pass --target 0.5 to ask for a MACs reduction instead of c, --baseline to compress
a trained model. CIFAR-10 comes from tensorflow-datasets (--data-dir).
"""

import recipe_common as common

from hos_keras import data, models


def main(argv=None):
    args = common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/cifar10_resnet56",
        epochs=160,
        lr=0.1,
        batch_size=64,
        distill_epochs=140,
        distill_lr=1e-3,
        finetune_epochs=30,
        finetune_lr=1e-4,
        coefficient=3.7,
    ).parse_args(argv)
    kwargs = {"data_dir": args.data_dir, "batch_size": args.batch_size}
    train = common.limited(data.cifar10("train", seed=args.seed, **kwargs), args.steps)
    test = common.limited(data.cifar10("test", **kwargs), args.steps)
    model = common.baseline(lambda: models.resnet56(num_classes=10), train, test, args)
    return common.compress_and_report(model, train, test, args, allocation="shapiro")


if __name__ == "__main__":
    main()
