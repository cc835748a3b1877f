"""Transformers: attention heads and MLP widths pruned exactly, slimmed and reloaded.

Every equivalence goes through the power-checked helpers of `invariants`: the
slim model against the masked one, with the mask of a plan one channel different
as the decoy.
"""

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

