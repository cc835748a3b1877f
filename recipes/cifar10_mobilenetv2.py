"""CIFAR-10 MobileNetV2 (CIFAR variant) pruned to half the MACs with HOS.

Baseline: 160 epochs of SGD (Nesterov, cosine from 0.1, weight decay 5e-4).
Compression: k3*k4 ranking, Shapiro-Wilk allocation with its coefficient searched
for 50% fewer MACs (--target; the paper's per-network coefficient for MobileNetV2
is not published), 140 epochs of distillation with the output and pivot losses,
30 of fine-tuning. CIFAR-10 comes from tensorflow-datasets (--data-dir).
"""

import recipe_common as common

from hos_keras import data, models


def main(argv=None):
    args = common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/cifar10_mobilenetv2",
        epochs=160,
        lr=0.1,
        batch_size=64,
        distill_epochs=140,
        distill_lr=1e-3,
        finetune_epochs=30,
        finetune_lr=1e-4,
        target=0.5,
    ).parse_args(argv)
    kwargs = {"data_dir": args.data_dir, "batch_size": args.batch_size}
    train = common.limited(data.cifar10("train", seed=args.seed, **kwargs), args.steps)
    test = common.limited(data.cifar10("test", **kwargs), args.steps)
    model = common.baseline(
        lambda: models.cifar_mobilenet_v2(num_classes=10), train, test, args
    )
    return common.compress_and_report(model, train, test, args, allocation="shapiro")


if __name__ == "__main__":
    main()
