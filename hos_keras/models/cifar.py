"""The CIFAR-sized networks of the paper's experiments, as functional Keras models.

Every layer has a systematic name (`stage2_block3_conv1`, `block5_expand`, ...) so
that plans, fixed allocations and pivots can refer to it. Only standard Keras layers
are used, so hos_keras's graph analysis sees every connection.
"""

from __future__ import annotations

import keras
from keras import layers

from hos_keras.errors import InvalidArgumentError

__all__ = [
    "cifar_mobilenet",
    "cifar_mobilenet_v2",
    "cifar_resnet",
    "resnet20",
    "resnet56",
    "resnet110",
]


def _conv_bn(x, filters, kernel, strides, name, suffix="", activation="relu"):
    """Conv (no bias, He-normal) + BN (+ activation), named `{name}_conv{suffix}` ..."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv{suffix}",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn{suffix}")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_relu{suffix}")(x)
    return x


def cifar_resnet(
    depth: int = 56,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    width: int = 16,
    name: str | None = None,
) -> keras.Model:
    """The CIFAR ResNet of He et al. (2016), depth 6n + 2, widths 16-32-64.

    Stem conv3x3-BN-ReLU, three stages of n basic blocks (conv3x3-BN-ReLU-conv3x3-BN
    plus shortcut, then ReLU) with `width`, `2 * width` and `4 * width` channels and
    stride 2 at the first block of stages 2 and 3, global average pooling and a Dense
    layer of logits named `"logits"`. Where the shape changes, the shortcut is a
    strided 1x1 convolution with BatchNormalization ("option B"). The paper's PyTorch
    code uses "option A" (subsample and zero-pad the channels), which needs a custom
    operation that channel analysis cannot see through; option B adds two small convs
    (about 3k parameters for ResNet-56) and keeps the graph made of standard layers.

    Layer names: `stem_conv`, `stem_bn`, `stem_relu`, then for stage s and block b
    `stage{s}_block{b}_conv1`, `_bn1`, `_relu1`, `_conv2`, `_bn2`, `_add`, `_out`,
    and `stage{s}_block1_shortcut_conv` / `_shortcut_bn` where present.

    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...). Defaults to `56`.
        num_classes: Number of logits. Defaults to `10`.
        input_shape: Image shape, channels last. Defaults to `(32, 32, 3)`.
        width: Channels of the first stage. Defaults to `16`.
        name: Model name. Defaults to `f"resnet{depth}"`.

    Returns:
        An uncompiled functional `keras.Model` returning logits.

    Raises:
        InvalidArgumentError: if `depth` is not of the form 6n + 2 with n >= 1.

    Example:

    ```python
    model = hos_keras.models.cifar_resnet(depth=56, num_classes=100)
    ```
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise InvalidArgumentError(
            f"Received depth={depth!r}; a CIFAR ResNet has depth 6n + 2 with n >= 1 "
            "(20, 32, 44, 56, 110, ...)."
        )
    blocks = (depth - 2) // 6
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, width, 3, 1, "stem")
    channels = width
    for stage in range(1, 4):
        filters = width * 2 ** (stage - 1)
        for block in range(1, blocks + 1):
            prefix = f"stage{stage}_block{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            y = _conv_bn(x, filters, 3, strides, prefix, suffix="1")
            y = _conv_bn(y, filters, 3, 1, prefix, suffix="2", activation=None)
            shortcut = x
            if strides != 1 or channels != filters:
                shortcut = _conv_bn(
                    x, filters, 1, strides, f"{prefix}_shortcut", activation=None
                )
            x = layers.Add(name=f"{prefix}_add")([y, shortcut])
            x = layers.ReLU(name=f"{prefix}_out")(x)
            channels = filters
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def resnet20(**kwargs) -> keras.Model:
    """`cifar_resnet(depth=20, **kwargs)`."""
    return cifar_resnet(depth=20, **kwargs)


def resnet56(**kwargs) -> keras.Model:
    """`cifar_resnet(depth=56, **kwargs)`: the paper's main CIFAR network."""
    return cifar_resnet(depth=56, **kwargs)


def resnet110(**kwargs) -> keras.Model:
    """`cifar_resnet(depth=110, **kwargs)`."""
    return cifar_resnet(depth=110, **kwargs)


_MOBILENET_CFG = (
    64,
    (128, 2),
    128,
    (256, 2),
    256,
    (512, 2),
    512,
    512,
    512,
    512,
    512,
    (1024, 2),
    1024,
)


def cifar_mobilenet(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    alpha: float = 1.0,
    name: str | None = None,
) -> keras.Model:
    """MobileNet v1 for CIFAR: a stride-1 stem and 13 depthwise-separable blocks.

    Each block is DepthwiseConv2D-BN-ReLU then a 1x1 Conv2D-BN-ReLU, with stride 2 at
    the first block of 128, 256, 512 and 1024 channels (widths scaled by `alpha`).
    Names: `stem_conv`, `block{i}_dw`, `block{i}_dw_bn`, `block{i}_pw`,
    `block{i}_pw_bn`, `pool`, `logits`.

    Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
    Vision Applications", arXiv:1704.04861, 2017.

    Args:
        num_classes: Number of logits. Defaults to `10`.
        input_shape: Image shape. Defaults to `(32, 32, 3)`.
        alpha: Width multiplier. Defaults to `1.0`.
        name: Model name. Defaults to `"cifar_mobilenet"`.

    Returns:
        An uncompiled functional `keras.Model` returning logits.
    """
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, max(8, int(32 * alpha)), 3, 1, "stem")
    for i, entry in enumerate(_MOBILENET_CFG, start=1):
        filters, strides = entry if isinstance(entry, tuple) else (entry, 1)
        x = layers.DepthwiseConv2D(
            3, strides=strides, padding="same", use_bias=False, name=f"block{i}_dw"
        )(x)
        x = layers.BatchNormalization(name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(name=f"block{i}_dw_relu")(x)
        x = layers.Conv2D(
            max(8, int(filters * alpha)),
            1,
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"block{i}_pw",
        )(x)
        x = layers.BatchNormalization(name=f"block{i}_pw_bn")(x)
        x = layers.ReLU(name=f"block{i}_pw_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or "cifar_mobilenet")


_MOBILENET_V2_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def cifar_mobilenet_v2(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    alpha: float = 1.0,
    name: str | None = None,
) -> keras.Model:
    """MobileNetV2 for CIFAR: stride-1 stem and inverted residual blocks.

    Blocks (expansion, channels, repeats, stride): (1,16,1,1), (6,24,2,1),
    (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1). Each block is a 1x1
    expansion Conv-BN-ReLU6 (absent when the expansion is 1), a 3x3 DepthwiseConv-BN-
    ReLU6, a linear 1x1 projection Conv-BN, and an Add with its input when the stride
    is 1 and the widths match; then a 1x1 Conv to 1280-BN-ReLU6, pooling, logits.
    Names: `block{i}_expand`, `_expand_bn`, `_dw`, `_dw_bn`, `_project`,
    `_project_bn`, `_add`; `head_conv`, `pool`, `logits`.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    CVPR 2018.

    Args:
        num_classes: Number of logits. Defaults to `10`.
        input_shape: Image shape. Defaults to `(32, 32, 3)`.
        alpha: Width multiplier of the blocks. Defaults to `1.0`.
        name: Model name. Defaults to `"cifar_mobilenet_v2"`.

    Returns:
        An uncompiled functional `keras.Model` returning logits.
    """

    def width(channels):
        return max(8, int(channels * alpha))

    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, 32, 3, 1, "stem", activation="relu6")
    channels = 32
    index = 0
    for expansion, out, repeats, first_stride in _MOBILENET_V2_CFG:
        for repeat in range(repeats):
            index += 1
            prefix = f"block{index}"
            strides = first_stride if repeat == 0 else 1
            y = x
            if expansion != 1:
                y = layers.Conv2D(
                    channels * expansion,
                    1,
                    use_bias=False,
                    kernel_initializer="he_normal",
                    name=f"{prefix}_expand",
                )(y)
                y = layers.BatchNormalization(name=f"{prefix}_expand_bn")(y)
                y = layers.ReLU(6.0, name=f"{prefix}_expand_relu")(y)
            y = layers.DepthwiseConv2D(
                3, strides=strides, padding="same", use_bias=False, name=f"{prefix}_dw"
            )(y)
            y = layers.BatchNormalization(name=f"{prefix}_dw_bn")(y)
            y = layers.ReLU(6.0, name=f"{prefix}_dw_relu")(y)
            y = layers.Conv2D(
                width(out),
                1,
                use_bias=False,
                kernel_initializer="he_normal",
                name=f"{prefix}_project",
            )(y)
            y = layers.BatchNormalization(name=f"{prefix}_project_bn")(y)
            if strides == 1 and channels == width(out):
                y = layers.Add(name=f"{prefix}_add")([x, y])
            x = y
            channels = width(out)
    x = _conv_bn(x, 1280, 1, 1, "head", activation="relu6")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or "cifar_mobilenet_v2")
