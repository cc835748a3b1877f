"""CIFAR-10 MobileNetV2 (CIFAR variant) pruned to half the MACs with HOS.

Pruning: k3*k4 ranking and Shapiro-Wilk ratios, as the authors' code
(github.com/chatzikon/DNN-COMPRESSION at commit 1cfdf7c,
cifar/step1/cifar10/mobilenetv2_prune_normality.py lines 27 and 129-130), with the
coefficient searched for 50% fewer MACs (--macs-reduction). The reference's
c = 2.4 (line 103) places W in its fixed range 0.3-1.0 (line 130), not in the
model's own T_min-T_max as hos_keras does, so it is not reused here. Like the reference,
it prunes no channel that crosses a residual merge (`scope="inner"`: the
expansion convs, with their depthwise convs following) and leaves the stem and
the 1280-channel head conv whole (lines 120-123).
Distillation and fine-tuning as the ResNet-56 recipes (see cifar10_resnet56.py):
140 epochs at lr 1e-3, x0.1 at epochs 80 and 120, then 30 at 1e-4 without Nesterov.
The reference's step 3 distils only ResNets and MobileNet v1
(cifar/step3/net_for_multiloss_ft.py lines 50-56 at ab38a4a); its fine-tuning
script serves every network (cifar/step4/main_finetune.py lines 31-43, 207).
The baseline training (160 epochs of SGD, Nesterov, cosine from 0.1, weight decay
5e-4) is hos_keras's. CIFAR-10 comes from tensorflow-datasets (--data-dir).
"""

import recipe_common as common

from hos_keras import models


def arguments(argv=None):
    """The recipe's settings, overridden by the flags in `argv`."""
    return common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/cifar10_mobilenetv2",
        **common.PAPER_CIFAR,
        skip=["stem_conv", "head_conv"],
        macs_reduction=0.5,
    ).parse_args(argv)


def main(argv=None):
    return common.cifar(
        arguments(argv), "cifar10", lambda: models.cifar_mobilenet_v2(num_classes=10)
    )


if __name__ == "__main__":
    main()
