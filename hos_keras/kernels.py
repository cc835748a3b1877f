"""Views of Keras layer kernels as one column of weights per output channel.

A filter criterion needs, for every output channel of a layer, the weights that
produce it. Keras stores kernels with the output channels on different axes per layer
type; `filter_matrix` hides that and returns a `(weights_per_filter, n_filters)`
matrix whose column `f` holds the weights of output channel `f`:

| layer | kernel shape | filter `f` |
|---|---|---|
| Conv1D/2D/3D | (*k, c_in / groups, c_out) | `kernel[..., f]` |
| Conv1D/2D/3DTranspose | (*k, c_out, c_in) | `kernel[..., f, :]` |
| SeparableConv1D/2D | pointwise (1, 1, c_in * m, c_out) | `pointwise[..., f]` |
| DepthwiseConv1D/2D | (*k, c_in, m) | output `c * m + j` is `kernel[..., c, j]` |
| Dense | (c_in, units) | `kernel[:, f]` |
"""

from __future__ import annotations

import keras
import numpy as np

from hos_keras.errors import ArgumentTypeError

__all__ = [
    "CONV_TRANSPOSE_TYPES",
    "CONV_TYPES",
    "DEPTHWISE_TYPES",
    "FILTER_LAYER_TYPES",
    "SEPARABLE_TYPES",
    "filter_matrix",
    "has_filters",
]

CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
CONV_TRANSPOSE_TYPES = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
SEPARABLE_TYPES = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
DEPTHWISE_TYPES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)

FILTER_LAYER_TYPES = (
    CONV_TYPES
    + CONV_TRANSPOSE_TYPES
    + SEPARABLE_TYPES
    + DEPTHWISE_TYPES
    + (keras.layers.Dense,)
)
"""Layer classes whose output channels `filter_matrix` understands."""


def has_filters(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a built layer with a kernel of output-channel filters."""
    return isinstance(layer, FILTER_LAYER_TYPES) and layer.built


def filter_matrix(layer: keras.layers.Layer) -> np.ndarray:
    """Returns the layer's weights as a `(weights_per_filter, n_filters)` matrix.

    Args:
        layer: A built Conv, ConvTranspose, SeparableConv, DepthwiseConv or Dense
            layer.

    Returns:
        A numpy array in the kernel's dtype. Column `f` holds every weight that
        produces output channel `f` (see the module docstring for the layouts).

    Raises:
        ArgumentTypeError: if the layer type has no output-channel kernel.
    """
    if not has_filters(layer):
        raise ArgumentTypeError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no output-channel "
            "kernel; expected a built layer of one of "
            f"{sorted(t.__name__ for t in FILTER_LAYER_TYPES)}."
        )
    if isinstance(layer, SEPARABLE_TYPES):
        kernel = np.asarray(layer.pointwise_kernel.numpy())
        return kernel.reshape(-1, kernel.shape[-1])
    kernel = np.asarray(layer.kernel.numpy())
    if isinstance(layer, CONV_TRANSPOSE_TYPES):
        kernel = np.moveaxis(kernel, -2, -1)
        return kernel.reshape(-1, kernel.shape[-1])
    if isinstance(layer, DEPTHWISE_TYPES):
        # Output channel c * m + j comes from kernel[..., c, j]: flattening the
        # last two axes in C order gives exactly that index.
        spatial = int(np.prod(kernel.shape[:-2]))
        return kernel.reshape(spatial, -1)
    return kernel.reshape(-1, kernel.shape[-1])
