"""Transformer blocks drawn at random, for tests/test_random_architectures.py.

A `TransformerBlocks` draws blocks on sequences `(batch, length, width)`:

- self-attention: `keras.layers.MultiHeadAttention` (random heads, key size,
  value size, output width, gate, bias) or `keras.layers.GroupQueryAttention`
  (query heads a multiple of the key/value heads), optionally with a causal
  mask;
- cross-attention: the same layers, reading keys and values from another
  sequence (of its own length and width);
- MLPs: `Dense` or `EinsumDense` up -> element-wise activation -> down, the
  activation in the projection or in an `Activation` layer after it; and gated
  (GLU) MLPs, `activation(gate) * up -> down`, multiplied by a `Multiply` layer
  or by `*`;

each block pre-norm, post-norm or without LayerNormalization, and with a
residual add when its output has its input's width. Every draw is logged by the
example's `pick`; `TransformerBlocks.features` names those of a model (see
`FEATURES`) and `pruned_features` what a plan pruned (heads, key/value groups,
MLP widths).
"""

from keras import layers

import hos_keras

MLP_ACTIVATIONS = ["gelu", "relu", "silu", "gelu_approximate"]
MLP_WIDTHS = list(range(3, 13))

# What the blocks can draw, and what a plan can prune in them.
FEATURES = [
    "self-attention",
    "cross-attention",
    "MultiHeadAttention",
    "MultiHeadAttention value_dim",
    "MultiHeadAttention output_shape",
    "MultiHeadAttention without bias",
    "GroupQueryAttention",
    "GroupQueryAttention sharing key/value heads",
    "attention gate",
    "causal mask",
    "residual add",
    "pre-norm",
    "post-norm",
    *(f"MLP {name}" for name in MLP_ACTIVATIONS),
    "MLP activation layer",
    "MLP of EinsumDense",
    "gated MLP",
    "gated MLP by Multiply",
    "gated MLP by *",
    "gated MLP of EinsumDense",
    "pruned attention heads",
    "pruned key/value groups",
    "pruned MLP width",
    "pruned gated MLP width",
]


def _activation(name):
    if name == "gelu_approximate":
        # keras-hub's tanh approximation (Gemma, GPT-2), recognised by probing.
        from keras_hub.src.utils.keras_utils import gelu_approximate

        return gelu_approximate
    return name


class TransformerBlocks:
    """Draws transformer blocks with `pick(options, label)`, naming their layers
    with `name(kind)`; `features(model)` tells what the blocks that `model`
    kept drew."""

    def __init__(self, pick, name):
        self.pick = pick
        self.name = name
        # (name of a block's last layer, the features it drew) per block.
        self._drawn = []

    def features(self, model):
        """The features drawn by the blocks in `model` (a block whose output
        no output reads is not in it)."""
        present = {layer.name for layer in model.layers}
        return {
            feature
            for last, found in self._drawn
            if last in present
            for feature in found
        }

    def attention(self, found, grouped=True):
        """A MultiHeadAttention or (if `grouped`) GroupQueryAttention layer."""
        pick = self.pick
        gate = pick([False, True], "attention gate")
        if gate:
            found.add("attention gate")
        kinds = ["MultiHeadAttention", "GroupQueryAttention"] if grouped else []
        kind = pick(kinds or ["MultiHeadAttention"], "attention")
        found.add(kind)
        if kind == "GroupQueryAttention":
            kv_heads = pick([1, 2, 3], "key/value heads")
            per_group = pick([1, 2, 3], "query heads per key/value head")
            if per_group > 1:
                found.add("GroupQueryAttention sharing key/value heads")
            return layers.GroupQueryAttention(
                head_dim=pick([2, 3, 4], "head_dim"),
                num_query_heads=kv_heads * per_group,
                num_key_value_heads=kv_heads,
                use_gate=gate,
                name=self.name("gqa"),
            )
        value_dim = pick([None, 2, 3], "value_dim")
        output_width = pick([None, None, 5, 7], "output_shape")
        bias = pick([True, True, False], "use_bias")
        if value_dim is not None:
            found.add("MultiHeadAttention value_dim")
        if output_width is not None:
            found.add("MultiHeadAttention output_shape")
        if not bias:
            found.add("MultiHeadAttention without bias")
        return layers.MultiHeadAttention(
            num_heads=pick([1, 2, 3, 4], "num_heads"),
            key_dim=pick([2, 3, 4], "key_dim"),
            value_dim=value_dim,
            output_shape=output_width,
            use_bias=bias,
            use_gate=gate,
            name=self.name("mha"),
        )

    def block(self, x, branch, found):
        """`branch(h)` of x, normalised before or after, with a residual add
        when the widths match; records `found` for the block."""
        pick = self.pick
        norm = pick(["pre-norm", "post-norm", None], "norm")
        h = x
        if norm == "pre-norm":
            h = layers.LayerNormalization(name=self.name("ln"))(x)
        y = branch(h)
        if y.shape[1:] == x.shape[1:] and pick([True, True, False], "residual"):
            found.add("residual add")
            y = layers.Add(name=self.name("residual"))([x, y])
        if norm == "post-norm":
            y = layers.LayerNormalization(name=self.name("ln"))(y)
        if norm:
            found.add(norm)
        self._drawn.append((y._keras_history.operation.name, found))
        return y

    def self_attention(self, x):
        found = {"self-attention"}
        layer = self.attention(found)
        causal = self.pick([False, True], "causal mask")
        if causal:
            found.add("causal mask")
        return self.block(x, lambda h: layer(h, h, use_causal_mask=causal), found)

    def cross_attention(self, x, context):
        """Attention of the positions of `x` to those of `context` (of another
        length; GroupQueryAttention needs it to have the width of `x`)."""
        found = {"cross-attention"}
        layer = self.attention(found, grouped=context.shape[-1] == x.shape[-1])
        return self.block(x, lambda h: layer(h, context), found)

    def _projection(self, kind, x, units, found, activation=None):
        if self.pick([False, True], f"{kind} EinsumDense"):
            found.add("MLP of EinsumDense")
            return layers.EinsumDense(
                "abc,cd->abd",
                (int(x.shape[1]), units),
                bias_axes="d",
                activation=activation,
                name=self.name(kind),
            )(x)
        return layers.Dense(units, activation=activation, name=self.name(kind))(x)

    def _activated(self, kind, x, units, name, found):
        """A projection followed by activation `name` (in it or after it)."""
        found.add(f"MLP {name}")
        activation = _activation(name)
        if self.pick([True, False], "activation in the projection"):
            return self._projection(kind, x, units, found, activation)
        found.add("MLP activation layer")
        y = self._projection(kind, x, units, found)
        return layers.Activation(activation, name=self.name("act"))(y)

    def mlp(self, x, gated):
        """up -> activation -> down, or activation(gate) * up -> down (GLU)."""
        pick = self.pick
        units = pick(MLP_WIDTHS, "MLP width")
        activation = pick(MLP_ACTIVATIONS, "MLP activation")
        found = set()

        def branch(h):
            if gated:
                found.add("gated MLP")
                gate = self._activated("mlp_gate", h, units, activation, found)
                up = self._projection("mlp_up", h, units, found)
                if pick(["Multiply", "*"], "gating") == "*":
                    found.add("gated MLP by *")
                    inner = gate * up
                else:
                    found.add("gated MLP by Multiply")
                    inner = layers.Multiply(name=self.name("glu"))([gate, up])
                if "MLP of EinsumDense" in found:
                    found.add("gated MLP of EinsumDense")
            else:
                inner = self._activated("mlp_up", h, units, activation, found)
            return self._projection("mlp_down", inner, int(h.shape[-1]), found)

        return self.block(x, branch, found)


def pruned_features(model, plan):
    """The features of `FEATURES` that `plan` prunes in the blocks of `model`:
    attention heads, key/value groups, the width of a plain or gated MLP."""
    graph = hos_keras.channel_groups(model, warn=False)
    found = set()
    for name, entry in plan.groups.items():
        if len(entry.keep) == entry.channels:
            continue
        producers = graph.group(name).producers
        units = hos_keras.attention.attention_units(graph.layers[producers[0]])
        if units is not None:
            found.add("pruned attention heads")
            if units[1] > 1:
                found.add("pruned key/value groups")
        elif any(p.startswith("mlp_gate") for p in producers):
            found.add("pruned gated MLP width")
        elif any(p.startswith("mlp_up") for p in producers):
            found.add("pruned MLP width")
    return found
