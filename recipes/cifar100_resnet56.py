"""CIFAR-100 ResNet-56 with the paper's settings (Chatzikonstantinou et al. 2020).

As cifar10_resnet56.py, on the 100 fine classes: k3*k4 ranking, Shapiro-Wilk
allocation with c = 3.7, 140 epochs of distillation with the output and two
pivot losses, 30 of fine-tuning. The paper does not list a separate coefficient
for CIFAR-100; use --coefficient or --target to change it.
"""

import recipe_common as common

from hos_keras import data, models


def main(argv=None):
    args = common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/cifar100_resnet56",
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
    train = common.limited(data.cifar100("train", seed=args.seed, **kwargs), args.steps)
    test = common.limited(data.cifar100("test", **kwargs), args.steps)
    model = common.baseline(lambda: models.resnet56(num_classes=100), train, test, args)
    return common.compress_and_report(model, train, test, args, allocation="shapiro")


if __name__ == "__main__":
    main()
