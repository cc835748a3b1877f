"""The invariants every pruning must keep, checked against the masked model."""

import keras
import numpy as np
from keras import layers

import hos_keras


def randomize_bn(model, seed=0):
    """Non-trivial BatchNormalization statistics so that slicing errors show.

    Every BatchNormalization counts, inside nested models and blocks too.
    """
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape)
                    if i != 1
                    else rng.normal(0, 0.1, w.shape)
                    for i, w in enumerate(layer.get_weights())
                ]
            )
    return model


def assert_same_outputs(a, b, x, rtol=1e-5, atol=1e-6):
    """Models `a` and `b` give the same outputs on `x` (inference mode)."""
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(a(x, training=False)),
        keras.ops.convert_to_numpy(b(x, training=False)),
        rtol=rtol,
        atol=atol,
    )


def check_invariant(model, plan, input_shape, seed=0):
    """slim == mask on a random batch; the model untouched; costs as planned."""
    before = [w.copy() for w in model.get_weights()]
    slim = hos_keras.slim_model(model, plan)
    masked = hos_keras.mask_model(model, plan)
    x = np.random.default_rng(seed).normal(size=(2, *input_shape)).astype("float32")
    expected = keras.ops.convert_to_numpy(masked(x, training=False))
    got = keras.ops.convert_to_numpy(slim(x, training=False))
    np.testing.assert_allclose(
        got, expected, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(expected)))
    )
    # The input model is untouched, bit for bit.
    for a, b in zip(before, model.get_weights(), strict=True):
        assert a.tobytes() == np.asarray(b).tobytes()
    # The slim model costs what the plan said.
    cost = hos_keras.profile(slim)
    assert cost["params"] == plan.params_after == slim.count_params()
    assert cost["macs"] == plan.macs_after
    # And pruning did something, unless the plan keeps everything.
    if any(len(e.keep) < e.channels for e in plan.groups.values()):
        assert slim.count_params() < model.count_params()
    return slim
