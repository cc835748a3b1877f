"""The CIFAR reference networks: structure against hand counts."""

import keras
import numpy as np
import pytest

import hos_keras
from hos_keras.errors import InvalidArgumentError
from hos_keras.models import cifar_mobilenet, cifar_mobilenet_v2, cifar_resnet


def _resnet_params(depth, width=16, classes=10):
    """Hand count: conv weights, BN (4 per channel), projection shortcuts, head."""
    n = (depth - 2) // 6
    total = 3 * 3 * 3 * width + 4 * width
    c_in = width
    for stage in range(3):
        c = width * 2**stage
        for _ in range(n):
            total += 9 * c_in * c + 4 * c + 9 * c * c + 4 * c
            if c_in != c:
                total += c_in * c + 4 * c
            c_in = c
    return total + c_in * classes + classes


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_resnet_parameter_count_and_blocks(depth):
    model = cifar_resnet(depth=depth)
    assert model.count_params() == _resnet_params(depth)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 3 * (depth - 2) // 6
    assert model.name == f"resnet{depth}"


def test_resnet56_size_is_the_papers_plus_two_projections():
    # Option A ResNet-56 has 0.85 M parameters; option B adds two 1x1 convs + BN.
    projections = 16 * 32 + 4 * 32 + 32 * 64 + 4 * 64
    assert cifar_resnet(56).count_params() - projections == pytest.approx(
        0.85e6, rel=0.01
    )


def test_resnet_forward_and_layer_names():
    model = hos_keras.models.resnet20(num_classes=7, input_shape=(16, 16, 3))
    out = model(np.random.default_rng(0).normal(size=(2, 16, 16, 3)))
    assert out.shape == (2, 7)
    assert np.all(np.isfinite(out))
    for name in (
        "stem_conv",
        "stage2_block3_conv1",
        "stage2_block3_add",
        "stage2_block3_out",
        "stage2_block1_shortcut_conv",
        "stage3_block1_shortcut_bn",
        "logits",
    ):
        model.get_layer(name)


@pytest.mark.parametrize("depth", [21, 7, 2, "56"])
def test_bad_depth(depth):
    with pytest.raises(InvalidArgumentError, match=f"depth={depth!r}"):
        cifar_resnet(depth=depth)


def test_mobilenets_build_and_run():
    v1 = cifar_mobilenet(num_classes=5, input_shape=(16, 16, 3), alpha=0.25)
    depthwise = [
        layer for layer in v1.layers if isinstance(layer, keras.layers.DepthwiseConv2D)
    ]
    assert len(depthwise) == 13
    v2 = cifar_mobilenet_v2(num_classes=5, input_shape=(16, 16, 3), alpha=0.5)
    adds = [layer for layer in v2.layers if isinstance(layer, keras.layers.Add)]
    # Residual blocks: repeats after the first of each stage (stride 1, same width).
    assert len(adds) == sum(r - 1 for r in (1, 2, 3, 4, 3, 3, 1))
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3))
    for model in (v1, v2):
        out = model(x)
        assert out.shape == (2, 5) and np.all(np.isfinite(out))
