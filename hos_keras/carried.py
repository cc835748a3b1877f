"""Layers carried over unchanged into a rebuilt model, whatever their config.

Surgery re-creates every layer of a model from its config. Some layers cannot be
re-created that way although a plan leaves them untouched: their `get_config`
returns keys their constructor does not accept (keras-hub 0.32's
`ViTPatchingAndEmbedding` adds `num_patches` and `num_positions`). A model holding
such a layer could not be rebuilt, nor saved and loaded, even by its own library,
as soon as the layer is serialised on its own.

`carry_over` re-creates such a layer from the config its constructor does accept
(a function Keras cannot find by name, such as keras-hub CLIP's unregistered
`quick_gelu`, is passed as the object the layer holds) and wraps it in
`CarriedLayer`, which stores that config: the rebuilt model computes what the
original did, and saves to `.keras` and loads again (with hos_keras imported,
which registers `CarriedLayer`) as long as every function it names is registered
with Keras.
"""

from __future__ import annotations

import inspect

import keras

from hos_keras.errors import UnsupportedModelError

__all__ = ["CarriedLayer", "accepted_config", "carry_over"]

# Keyword arguments keras.layers.Layer accepts besides its named parameters.
_LAYER_KWARGS = frozenset(
    {"input_dim", "input_shape", "batch_input_shape", "batch_size", "weights"}
)


def accepted_config(cls: type, config: dict) -> dict:
    """`config` without the keys no constructor along `cls`'s bases accepts.

    Every `__init__` from `cls` up to `keras.layers.Layer` is read; a key named by
    none of them (and not one of Layer's own keyword arguments) is dropped.

    Args:
        cls: A `keras.layers.Layer` subclass.
        config: What an instance's `get_config()` returned.

    Returns:
        A new dict.
    """
    accepted = set(_LAYER_KWARGS)
    for base in cls.__mro__:
        init = base.__dict__.get("__init__")
        if init is not None:
            accepted.update(
                name
                for name, p in inspect.signature(init).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            )
        if base is keras.layers.Layer:
            break
    return {k: v for k, v in config.items() if k in accepted}


@keras.saving.register_keras_serializable(package="hos_keras")
class CarriedLayer(keras.layers.Layer):
    """A layer carried over unchanged, stored with a config that re-creates it.

    Calls the wrapped layer and has exactly its weights. Its config holds the
    wrapped layer's class and the part of its config that the class's constructor
    accepts (see `accepted_config`), so that a model holding it loads again.

    Args:
        layer: The layer to carry, or its serialized form (as `from_config`
            passes it).
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Example:

    ```python
    layer = backbone.get_layer("vit_patching_and_embedding")
    copy = hos_keras.carried.carry_over(layer, layer.get_config())
    ```
    """

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        self.layer = layer

    def build(self, input_shape):
        # The wrapped layer is built here, outside the symbolic call, as Keras
        # builds any layer: some layers keep tensors they make in `build`.
        if not self.layer.built:
            self.layer.build(input_shape)

    def call(self, inputs, *args, training=None, **kwargs):
        # Keras passes `training` on only to layers whose call takes it.
        return self.layer(inputs, *args, training=training, **kwargs)

    def get_config(self):
        config = super().get_config()
        serialized = keras.saving.serialize_keras_object(self.layer)
        serialized["config"] = accepted_config(type(self.layer), serialized["config"])
        serialized.pop("build_config", None)
        config["layer"] = serialized
        return config


def carry_over(layer, config: dict, name: str = ""):
    """A new copy of a layer (or operation) whose config a plan leaves as it is.

    The layer is re-created from `config`; if that fails, from the part of it its
    constructor accepts, wrapped in `CarriedLayer` so that the copy saves and
    loads. The copy has no weights yet.

    Args:
        layer: The layer to copy.
        config: Its config (`layer.get_config()`, or what stands in for it).
        name: Its qualified name in the model, for the error message. Defaults to
            the layer's name.

    Returns:
        A new, unbuilt layer that computes what `layer` computes once it has its
        weights.

    Raises:
        UnsupportedModelError: if neither config re-creates the layer.
    """
    try:
        return type(layer).from_config(config)
    except Exception as error:
        if not isinstance(layer, keras.layers.Layer):
            raise UnsupportedModelError(
                f"Could not re-create operation {name or layer.name!r} "
                f"({type(layer).__name__}) from its config: "
                f"{type(error).__name__}: {error}"
            ) from error
        first = error
    repaired = accepted_config(type(layer), config)
    for key, value in repaired.items():
        # A function Keras cannot find by name (not registered) is passed as
        # the object the layer holds.
        held = getattr(layer, key, None)
        function = isinstance(value, dict) and value.get("class_name") == "function"
        if function and callable(held):
            repaired[key] = held
    try:
        inner = type(layer).from_config(repaired)
    except Exception as error:
        raise UnsupportedModelError(
            f"Could not re-create layer {name or layer.name!r} "
            f"({type(layer).__name__}) from its config: {type(first).__name__}: "
            f"{first} Nor from the arguments its constructor accepts: "
            f"{type(error).__name__}: {error} A custom layer needs a get_config() "
            "that lists its constructor arguments and "
            "@keras.saving.register_keras_serializable()."
        ) from error
    return CarriedLayer(inner, name=layer.name, dtype=layer.dtype_policy)
