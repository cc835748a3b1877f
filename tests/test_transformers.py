"""Transformers: attention heads and MLP widths pruned exactly, slimmed and reloaded.

Every equivalence goes through the power-checked helpers of `invariants`: the
slim model against the masked one, with the mask of a plan one channel different
as the decoy.
"""

import functools
import warnings

import keras
import pytest
from invariants import check_invariant, check_reload
from keras import layers

import hos_keras
from hos_keras import carried


def _plan(model, **options):
    """plan_pruning with its 'does not prune' warning silenced (transformers
    freeze their hidden width on purpose)."""
    options = {"criterion": "random", "allocation": "fixed", "ratio": 0.3, **options}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "hos_keras does not prune")
        return hos_keras.plan_pruning(model, **options)


# Layers carried over ------------------------------------------------------------


@keras.saving.register_keras_serializable(package="test_transformers")
class _OffsetWithBadConfig(layers.Layer):
    """A layer with a weight of its own whose get_config adds a key its
    constructor rejects (as keras-hub's ViTPatchingAndEmbedding does)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(self.units,), initializer="normal")

    def call(self, x):
        return x + self.offset

    def get_config(self):
        return {**super().get_config(), "units": self.units, "derived": 2}


def test_untouched_layer_with_a_bad_config_is_carried_over(tmp_path):
    inputs = keras.Input((6,))
    x = _OffsetWithBadConfig(6, name="offset")(inputs)
    x = layers.Dense(16, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, layers.Dense(3, name="out")(x))
    with pytest.raises(TypeError):
        _OffsetWithBadConfig.from_config(model.get_layer("offset").get_config())
    plan = _plan(model, criterion="l1", ratio=0.5)
    assert len(plan["hidden"].keep) == 8
    slim = check_invariant(model, plan)
    assert isinstance(slim.get_layer("offset"), carried.CarriedLayer)
    check_reload(slim, model, plan, tmp_path / "slim.keras")


def test_accepted_config_drops_only_unknown_keys():
    config = _OffsetWithBadConfig(4, name="o").get_config()
    kept = carried.accepted_config(_OffsetWithBadConfig, config)
    assert "derived" not in kept
    assert kept["units"] == 4 and kept["name"] == "o"


# Activations --------------------------------------------------------------------


def test_activations_are_recognised_by_what_they_compute():
    from keras_hub.src.utils.keras_utils import gelu_approximate

    from hos_keras.activations import is_elementwise

    gelu = keras.activations.gelu
    assert is_elementwise(gelu_approximate)
    assert is_elementwise(functools.partial(gelu, approximate=True))
    assert is_elementwise(lambda x: x * keras.ops.sigmoid(1.702 * x))
    assert is_elementwise(None) and is_elementwise("relu")
    assert not is_elementwise(keras.activations.softmax)
    assert not is_elementwise(keras.activations.glu)
    assert not is_elementwise(lambda x: x - keras.ops.mean(x, axis=-1, keepdims=True))
    assert not is_elementwise(lambda x: x * keras.ops.arange(x.shape[-1]))


def test_register_activation_lets_channels_pass():
    def fixed_width_relu(x):
        # Element-wise, but defined for 16 channels only: the probe cannot call it.
        if x.shape[-1] != 16:
            raise ValueError("expects 16 channels")
        return keras.ops.relu(x)

    inputs = keras.Input((8,))
    x = layers.Dense(16, activation=fixed_width_relu, name="hidden")(inputs)
    model = keras.Model(inputs, layers.Dense(3, name="out")(x))
    graph = hos_keras.channel_groups(model, warn=False)
    assert "fixed_width_relu" in graph.group("hidden").frozen
    hos_keras.register_activation(fixed_width_relu)
    assert hos_keras.channel_groups(model, warn=False).group("hidden").prunable
    with pytest.raises(hos_keras.errors.ArgumentTypeError, match="activation=3"):
        hos_keras.register_activation(3)


# MLP widths -----------------------------------------------------------------------


def _mlp_block(gated, einsum, activation="gelu_approximate"):
    """A pre-norm residual block: norm -> MLP (plain or GLU) -> add."""
    from keras_hub.src.utils.keras_utils import gelu_approximate

    act = gelu_approximate if activation == "gelu_approximate" else activation
    inputs = keras.Input((5, 12))
    x = layers.LayerNormalization(name="norm")(inputs)

    def up(name, activation=None):
        if einsum:
            return layers.EinsumDense(
                "btd,df->btf",
                (5, 24),
                bias_axes="f",
                activation=activation,
                name=name,
            )
        return layers.Dense(24, activation=activation, name=name)

    if gated:
        h = layers.Multiply(name="glu")([up("gate", act)(x), up("up")(x)])
    else:
        h = up("up", act)(x)
    if einsum:
        down = layers.EinsumDense("btf,fd->btd", (5, 12), name="down")
    else:
        down = layers.Dense(12, name="down")
    x = layers.Add(name="residual")([inputs, down(h)])
    outputs = layers.Dense(4, name="head")(layers.Flatten()(x))
    return keras.Model(inputs, outputs, name="mlp_block")


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("einsum", [False, True], ids=["dense", "einsum"])
def test_mlp_width_is_one_group(gated, einsum, tmp_path):
    model = _mlp_block(gated, einsum)
    graph = hos_keras.channel_groups(model, warn=False)
    producers = ("gate", "up") if gated else ("up",)
    assert [g.producers for g in graph.prunable] == [producers]
    assert graph.prunable[0].channels == 24
    plan = _plan(model)
    slim = check_invariant(model, plan)
    assert (
        slim.get_layer("down").kernel.shape[0]
        == len(plan["gate" if gated else "up"].keep)
        == 16
    )
    check_reload(slim, model, plan, tmp_path / "mlp.keras")
