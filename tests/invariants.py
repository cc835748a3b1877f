"""The invariants every pruning must keep, and comparisons that can fail.

Two models that output zeros agree whatever their channels, so an equivalence
check is only worth something when it could have failed. `assert_equivalent`
therefore checks its own power before it compares: the reference outputs must
vary across the inputs, and every decoy (the output of a plausibly wrong model,
e.g. the mask of a plan that keeps other channels) must differ from the reference
by at least `POWER` times the tolerance. A comparison without power fails, naming
the model. `live_batchnorm` gives a model the batch-norm statistics that keep its
activations spread, so that deep networks do not switch off every ReLU.
"""

import dataclasses

import keras
import numpy as np
from keras import layers

import hos_keras

# A decoy must miss the reference by this many tolerances.
POWER = 100.0
# The reference outputs must spread across the inputs by this many tolerances.
VARIATION = 10.0


def random_inputs(model, batch=4, seed=0):
    """Random float32 inputs for every input of `model` (a list if many).

    Standard-normal noise plus, for inputs with positions (images, sequences), an
    offset per sample and channel drawn from N(0, 1): global pooling averages
    i.i.d. noise away, and without the offsets every sample would reach the head
    as nearly the same vector.
    """
    rng = np.random.default_rng(seed)
    xs = []
    for t in model.inputs:
        shape = (batch, *tuple(t.shape)[1:])
        x = rng.normal(size=shape)
        if len(shape) > 2:
            x = x + rng.normal(size=(batch, *[1] * (len(shape) - 2), shape[-1]))
        xs.append(x.astype("float32"))
    return xs[0] if len(xs) == 1 else xs


def live_batchnorm(model, seed=0, samples=64):
    """Batch-norm weights and statistics under which every layer stays alive.

    Each BatchNormalization (nested ones included) gets gamma from U(0.5, 1.5) and
    beta from N(0, 0.1); its moving mean and variance are then estimated on
    `samples` standard-normal inputs by `hos_keras.recalibrate_batchnorm`, so each
    normalised activation has mean near beta and spread near gamma, however deep
    the layer. Returns the model.
    """
    rng = np.random.default_rng(seed)
    found = False
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, layers.BatchNormalization):
            found = True
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.1, layer.beta.shape))
    if found:
        x = random_inputs(model, batch=samples, seed=seed + 1)
        if isinstance(x, list):
            x = tuple(x)
            data = [x]
        else:
            data = x
        hos_keras.recalibrate_batchnorm(model, data, batch_size=32)
    return model


def different_plan(plan):
    """A plan that differs from `plan` by one channel in every pruned group.

    In each group that removes channels, its first kept channel is swapped for its
    first removed one; a plan that removes nothing instead removes the last channel
    of its widest group. The mask of this plan is the decoy of slim == mask: a
    surgery that picked wrong channels would look like it.
    """
    groups = dict(plan.groups)
    changed = False
    for name, entry in plan.groups.items():
        pruned = entry.pruned
        if len(pruned) and len(entry.keep):
            keep = np.sort(np.append(entry.keep[1:], pruned[0]))
            groups[name] = dataclasses.replace(entry, keep=keep.astype(np.int64))
            changed = True
    if not changed:
        widest = max(plan.groups.values(), key=lambda e: e.channels)
        groups[widest.name] = dataclasses.replace(widest, keep=widest.keep[:-1])
    return dataclasses.replace(plan, groups=groups)


def swapped_channels(model):
    """A copy of `model` whose first multi-channel kernel has two output channels
    swapped (bias too): the decoy of comparisons that have no plan."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy._flatten_layers(include_self=False):
        kernel = getattr(layer, "kernel", None)
        if kernel is None or kernel.shape[-1] < 2:
            continue
        values = keras.ops.convert_to_numpy(kernel).copy()
        values[..., [0, 1]] = values[..., [1, 0]]
        kernel.assign(values)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            b = keras.ops.convert_to_numpy(bias).copy()
            b[[0, 1]] = b[[1, 0]]
            bias.assign(b)
        return copy
    raise AssertionError(f"model {model.name!r} has no kernel with two channels")


def outputs(model, x):
    """The model's outputs on `x` in inference mode, as a list of numpy arrays."""
    return [
        np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)
        for t in keras.tree.flatten(model(x, training=False))
    ]


def _as_list(values):
    if isinstance(values, keras.Model):
        raise TypeError("pass outputs, not a model (see invariants.outputs)")
    return [
        np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)
        for v in keras.tree.flatten(values)
    ]


def assert_equivalent(expected, got, *, decoys, name, rtol=1e-4, atol=None):
    """`got` equals `expected` within tolerance, in a comparison that has power.

    Args:
        expected: The reference outputs (an array or a structure of arrays), on a
            batch of at least two different inputs.
        got: The outputs to check, with the same structure.
        decoys: Outputs of plausibly wrong models on the same inputs (at least
            one); each must differ from `expected` by `POWER` tolerances or more.
        name: The model's name, for the failure message.
        rtol: Relative tolerance per element.
        atol: Absolute tolerance; defaults to `rtol` times the largest reference
            output.

    Raises:
        AssertionError: if the outputs are constant across the inputs, a decoy is
            as close as the tolerance allows (the comparison could not fail), or
            `got` differs from `expected`.
    """
    expected, got = _as_list(expected), _as_list(got)
    decoys = [_as_list(d) for d in decoys]
    assert decoys, f"{name}: an equivalence check needs at least one decoy"
    scale = max(float(np.max(np.abs(e))) for e in expected)
    if atol is None:
        atol = rtol * scale
    tolerance = atol + rtol * scale
    spread = max(float(np.max(np.ptp(e, axis=0))) for e in expected)
    assert spread >= VARIATION * tolerance, (
        f"{name}: the compared outputs hardly vary across inputs (spread "
        f"{spread:.3g} < {VARIATION:g} x tolerance {tolerance:.3g}); the comparison "
        "has no power: make the model's activations live"
    )
    for i, decoy in enumerate(decoys):
        miss = max(
            float(np.max(np.abs(d - e))) for d, e in zip(decoy, expected, strict=True)
        )
        assert miss >= POWER * tolerance, (
            f"{name}: decoy {i} differs from the reference by only {miss:.3g} "
            f"(< {POWER:g} x tolerance {tolerance:.3g}); the comparison could not "
            "tell a wrong model from the right one"
        )
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=name)


def assert_same_outputs(a, b, x, rtol=1e-5, atol=None, *, decoy=None):
    """Models `a` and `b` give the same outputs on `x` (inference mode), checked
    with power against `decoy` (a model; `swapped_channels(a)` by default)."""
    decoy = swapped_channels(a) if decoy is None else decoy
    assert_equivalent(
        outputs(a, x),
        outputs(b, x),
        decoys=[outputs(decoy, x)],
        name=a.name,
        rtol=rtol,
        atol=atol,
    )


def check_invariant(model, plan, seed=0):
    """slim == mask with power; the model untouched; costs as planned.

    The decoy is the mask of `different_plan(plan)`. Returns the slim model.
    """
    before = [w.copy() for w in model.get_weights()]
    slim = hos_keras.slim_model(model, plan)
    masked = hos_keras.mask_model(model, plan)
    decoy = hos_keras.mask_model(model, different_plan(plan))
    x = random_inputs(model, batch=4, seed=seed)
    assert_equivalent(
        outputs(masked, x),
        outputs(slim, x),
        decoys=[outputs(decoy, x)],
        name=model.name,
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


def check_reload(slim, model, plan, path, seed=0):
    """`slim` saves to `path` (.keras) and reloads with equal outputs, checked
    with power against the mask of `different_plan(plan)` on `model`."""
    slim.save(path)
    loaded = keras.models.load_model(path)
    x = random_inputs(slim, batch=4, seed=seed)
    decoy = hos_keras.mask_model(model, different_plan(plan))
    assert_equivalent(
        outputs(slim, x),
        outputs(loaded, x),
        decoys=[outputs(decoy, x)],
        name=f"{model.name} reloaded",
        rtol=1e-5,
    )
    return loaded
