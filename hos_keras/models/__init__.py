"""Reference architectures of the paper's experiments, as functional Keras models."""

from hos_keras.models.cifar import (
    cifar_mobilenet,
    cifar_mobilenet_v2,
    cifar_resnet,
    resnet20,
    resnet56,
    resnet110,
)

__all__ = [
    "cifar_mobilenet",
    "cifar_mobilenet_v2",
    "cifar_resnet",
    "resnet20",
    "resnet56",
    "resnet110",
]
