"""Fashion-MNIST ResNet-20: train, HOS-prune to half the MACs, distill, fine-tune.

Runs offline on the IDX files of Debian's dataset-fashion-mnist. The defaults are
the README demo's quick setting (3 + 1 + 1 epochs, about 7 minutes on 2 CPU
cores); the baseline is reused from --output-dir when it is there. The accuracy
reported is on the 10,000 test images (Fashion-MNIST has no validation split).

Run: bash run.sh demo   or   python recipes/fashion_mnist_resnet20.py --help
"""

import recipe_common as common


def arguments(argv=None):
    """The recipe's settings, overridden by the flags in `argv`."""
    return common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/fashion_mnist_resnet20",
        epochs=3,
        lr=0.05,
        batch_size=128,
        distill_epochs=1,
        distill_lr=1e-2,
        finetune_epochs=1,
        finetune_lr=1e-3,
        macs_reduction=0.5,
    ).parse_args(argv)


def main(argv=None):
    args = arguments(argv)
    train, test, model = common.fashion_mnist_resnet20(args)
    return common.compress_and_report(model, train, test, args, allocation="shapiro")


if __name__ == "__main__":
    main()
