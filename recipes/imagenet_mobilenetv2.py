"""ImageNet MobileNetV2 pruned to half the MACs with HOS.

ImageNet (ILSVRC 2012) comes from tensorflow-datasets: put ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar in --manual-dir once; --data-dir keeps the prepared
data. Training a baseline on ImageNet takes days on GPUs: pass --baseline with a
trained MobileNetV2 .keras model (logits output). Compression: k3*k4 ranking,
Shapiro-Wilk allocation searched for 50% fewer MACs, distillation with the output
and pivot losses (10 epochs at lr 1e-3), then fine-tuning (2 epochs at 1e-4). These
epochs and rates are hos_keras's, sized for a budget, not the reference's.
"""

# isort: off
import recipe_common as common  # first: it starts TensorFlow quietly
# isort: on

import keras

from hos_keras import data


def main(argv=None):
    parser = common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/imagenet_mobilenetv2",
        epochs=90,
        lr=0.1,
        batch_size=64,
        distill_epochs=10,
        distill_lr=1e-3,
        finetune_epochs=2,
        finetune_lr=1e-4,
        macs_reduction=0.5,
    )
    parser.add_argument("--manual-dir", help="directory with the ILSVRC2012 tars")
    parser.add_argument("--image-size", type=int, default=224, help="crop size")
    args = parser.parse_args(argv)
    kwargs = {
        "data_dir": args.data_dir,
        "manual_dir": args.manual_dir,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
    }
    train = common.limited(data.imagenet("train", seed=args.seed, **kwargs), args.steps)
    val = common.limited(data.imagenet("validation", **kwargs), args.steps)
    model = common.baseline(
        lambda: keras.applications.MobileNetV2(
            input_shape=(args.image_size, args.image_size, 3),
            weights=None,
            classes=1000,
            classifier_activation=None,
        ),
        train,
        val,
        args,
    )
    return common.compress_and_report(model, train, val, args, allocation="shapiro")


if __name__ == "__main__":
    main()
