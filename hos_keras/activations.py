"""Which activation functions act on each channel alone.

Channels pass through an activation only if it is element-wise: `f(x)[..., c]`
depends on `x[..., c]` alone, the same way for every channel. A function is
recognised by what it computes, not by the name it was registered under:

1. Keras' own element-wise activations (`keras.activations.relu`, `gelu`, ...);
2. activations a user declared with `register_activation` (a function or a
   name);
3. `functools.partial` over an element-wise function (e.g.
   `partial(keras.activations.gelu, approximate=True)`);
4. any other function is probed once on random inputs: changing one channel must
   change no other output channel, and permuting the channels must permute the
   outputs. keras-hub's `gelu_approximate`, CLIP's `quick_gelu` and a user's
   `lambda x: x * keras.ops.sigmoid(x)` pass; softmax, glu and functions that
   scale channels by constants do not.

A function the probe cannot call (e.g. one that needs a given shape) freezes its
channels until it is declared with `register_activation`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
import numpy as np

from hos_keras.errors import ArgumentTypeError

__all__ = ["PER_CHANNEL_ACTIVATIONS", "is_elementwise", "register_activation"]

PER_CHANNEL_ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "swish",
        "hard_silu",
        "hard_swish",
        "sigmoid",
        "hard_sigmoid",
        "sparse_sigmoid",
        "log_sigmoid",
        "tanh",
        "hard_tanh",
        "tanh_shrink",
        "soft_shrink",
        "hard_shrink",
        "softplus",
        "softsign",
        "sparse_plus",
        "squareplus",
        "mish",
        "exponential",
        "threshold",
    }
)
"""Keras' activations that act on each channel alone; softmax, log_softmax and
sparsemax normalise over channels, glu halves them."""

# Names and functions declared element-wise with register_activation.
_NAMES: set[str] = set()
_FUNCTIONS: dict[int, Callable] = {}
# id(function) -> (function, verdict): a probe runs once per function.
_VERDICTS: dict[int, tuple[Callable, bool]] = {}


def register_activation(activation: str | Callable) -> None:
    """Declares an activation element-wise, so that channels pass through it.

    Most element-wise functions are recognised without this (see
    `hos_keras.activations`); declare the ones hos_keras cannot probe, or a name
    under which a function is registered with Keras.

    Args:
        activation: A function, or a name: a function's `__name__` or its Keras
            registered name (`"package>name"`).

    Raises:
        ArgumentTypeError: if `activation` is neither a string nor callable.

    Example:

    ```python
    @keras.saving.register_keras_serializable(package="mine")
    def scaled_tanh(x):
        return 1.7159 * keras.ops.tanh(0.6666 * x)

    hos_keras.register_activation(scaled_tanh)
    ```
    """
    if isinstance(activation, str):
        _NAMES.add(activation)
    elif callable(activation):
        _FUNCTIONS[id(activation)] = activation
    else:
        raise ArgumentTypeError(
            f"Received activation={activation!r} of type "
            f"{type(activation).__name__}; pass a function or its name, e.g. "
            "hos_keras.register_activation('my_gelu')."
        )
    _VERDICTS.clear()


def registry_key() -> tuple:
    """What identifies the declared activations now (traced graphs depend on
    it)."""
    return tuple(sorted(_NAMES)), tuple(sorted(_FUNCTIONS))


def name_of(activation) -> str | None:
    """The name an activation function is known by (for messages)."""
    if isinstance(activation, functools.partial):
        return name_of(activation.func)
    return getattr(activation, "__name__", None)


def is_elementwise(activation) -> bool:
    """Whether an activation acts on each channel alone.

    Args:
        activation: A function (what a layer's `activation` attribute holds), a
            name, or `None` (linear).

    Returns:
        `True` for the activations described in `hos_keras.activations`.
    """
    if activation is None:
        return True
    if isinstance(activation, str):
        return activation in PER_CHANNEL_ACTIVATIONS or activation in _NAMES
    cached = _VERDICTS.get(id(activation))
    if cached is not None and cached[0] is activation:
        return cached[1]
    verdict = _decide(activation)
    _VERDICTS[id(activation)] = (activation, verdict)
    return verdict


def _decide(activation) -> bool:
    if id(activation) in _FUNCTIONS:
        return True
    name = getattr(activation, "__name__", None)
    if name in _NAMES or _registered_name(activation) in _NAMES:
        return True
    if name in PER_CHANNEL_ACTIVATIONS and _is_keras(activation, name):
        return True
    if isinstance(activation, functools.partial) and _decide(activation.func):
        # Keyword arguments that reach across channels would change that.
        keywords = set(activation.keywords or ())
        if not keywords & {"axis", "axes"}:
            return True
    return _probe(activation)


def _registered_name(activation) -> str | None:
    try:
        return keras.saving.get_registered_name(activation)
    except Exception:  # noqa: BLE001 - not every callable has one
        return None


def _is_keras(activation, name: str) -> bool:
    try:
        return keras.activations.get(name) is activation
    except (ValueError, TypeError):
        return False


def _probe(activation) -> bool:
    """Changing one channel changes only that output channel, and permuting the
    channels permutes the outputs, on random inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7)).astype("float32")
    changed = x.copy()
    changed[..., 0] += rng.normal(size=(2, 3)).astype("float32") + 1.0
    permutation = rng.permutation(7)
    try:
        y, y_changed, y_permuted = (
            np.asarray(keras.ops.convert_to_numpy(activation(keras.ops.array(v))))
            for v in (x, changed, x[..., permutation])
        )
    except Exception:  # noqa: BLE001 - a function that cannot be probed
        return False
    if not y.shape == y_changed.shape == y_permuted.shape == x.shape:
        return False
    if not np.all(np.isfinite(y)):
        return False
    scale = max(float(np.max(np.abs(y))), 1.0)
    close = functools.partial(np.allclose, rtol=1e-5, atol=1e-6 * scale)
    return bool(
        close(y_changed[..., 1:], y[..., 1:]) and close(y_permuted, y[..., permutation])
    )
