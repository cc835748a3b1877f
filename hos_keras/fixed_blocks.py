"""Blocks traced at a fixed sequence length and re-created from their config.

A functional graph cannot compute a causal mask from a sequence length it does
not know: keras-hub's decoder blocks (Llama, Mistral, Gemma, ...) build theirs
with `ops.arange(sequence_length)`, so their `call` cannot be traced on inputs
of unknown length into a functional view. `hos_keras.graph` then traces such a
block on inputs of batch 1 and length 1 (length 8 to check that the trace
computes what the block does): the view shows how channels flow through the
block's sublayers, and its MACs are those of one position, as `profile` counts
any unknown dimension.

Such a view cannot be replayed for other lengths, so surgery re-creates the
block itself, from its config with the pruned widths, and loads the sliced
weights of its sublayers. A `BlockRecipe` says which config arguments hold which
sublayer widths; a width no recipe entry covers freezes. keras-hub's decoder
blocks are described here by class path (keras-hub need not be installed):

| block | pruned | frozen, and why |
|---|---|---|
| GemmaDecoderBlock | query heads (whole key/value groups), MLP width | - |
| MistralTransformerDecoder | query heads (key/value groups), MLP width | - |
| LlamaTransformerDecoder, QwenTransformerDecoder | MLP width | heads: the head size is `hidden_dim // num_query_heads` |

GPT-2 and OPT blocks (keras-hub's `TransformerDecoder`) cannot be traced even at a
fixed length: `CachedMultiHeadAttention` given `cache=None` fails in symbolic
calls (`compute_output_spec` takes no `cache`).
"""

from __future__ import annotations

import dataclasses

from hos_keras.errors import ArgumentTypeError

__all__ = ["BlockRecipe", "Width", "recipe_for", "register_block_recipe"]


@dataclasses.dataclass(frozen=True)
class Width:
    """Where a block's config argument comes from.

    Attributes:
        sublayer: The block attribute holding the sublayer.
        count: What of the sublayer's kept channels the argument is: `"units"`
            (its output channels, e.g. an MLP's width), `"heads"` (an attention
            layer's query heads) or `"kv_heads"` (its key/value heads); or
            `"attribute"` to keep the value of the original sublayer's
            attribute `name` (a size the block would otherwise derive from
            widths that change).
        factor: The argument is the count times this. Defaults to `1`.
        name: The attribute read when `count="attribute"`. Defaults to `""`.
    """

    sublayer: str
    count: str
    factor: int = 1
    name: str = ""


class BlockRecipe:
    """How to re-create a block with pruned widths from its config.

    Args:
        widths: `{config argument: Width}`.
        tied: Attributes of sublayers whose widths follow a listed one (the gate
            of a gated MLP follows its up projection). Defaults to `()`.

    Example:

    ```python
    hos_keras.fixed_blocks.register_block_recipe(
        MyDecoderBlock,
        hos_keras.fixed_blocks.BlockRecipe(
            {"intermediate_dim": hos_keras.fixed_blocks.Width("up", "units")},
            tied=("gate",),
        ),
    )
    ```
    """

    def __init__(self, widths: dict[str, Width], tied: tuple[str, ...] = ()):
        self.widths = dict(widths)
        self.tied = tuple(tied)

    def sublayers(self, block) -> list:
        """The sublayers whose widths the recipe re-creates."""
        names = [w.sublayer for w in self.widths.values() if w.count != "attribute"]
        found = (getattr(block, name, None) for name in (*names, *self.tied))
        return [sub for sub in found if sub is not None]

    def configure(self, block, config: dict, kept: dict[int, int]) -> dict:
        """The block's config for pruned sublayers.

        Args:
            block: The original block.
            config: Its config.
            kept: `{id(sublayer): output channels kept}` for the sublayers a plan
                prunes (an attention layer's channels are its units).

        Returns:
            The config with every argument the recipe lists updated.
        """
        from hos_keras.attention import attention_units

        config = dict(config)
        for argument, width in self.widths.items():
            sub = getattr(block, width.sublayer)
            if width.count == "attribute":
                config[argument] = getattr(sub, width.name)
                continue
            if id(sub) not in kept:
                continue
            count = kept[id(sub)]
            if width.count == "heads":
                count *= attention_units(sub)[1]
            config[argument] = count * width.factor
        return config


_RECIPES: dict[str, BlockRecipe] = {}


def register_block_recipe(block_class: type | str, recipe: BlockRecipe) -> None:
    """Declares how to re-create a block class with pruned widths.

    Args:
        block_class: The block's class, or its full path `"module.ClassName"`.
        recipe: A `BlockRecipe`.

    Raises:
        ArgumentTypeError: for another kind of argument.
    """
    if isinstance(block_class, type):
        block_class = f"{block_class.__module__}.{block_class.__qualname__}"
    if not isinstance(block_class, str) or not isinstance(recipe, BlockRecipe):
        raise ArgumentTypeError(
            f"Received block_class={block_class!r}, recipe={recipe!r}; pass a "
            "layer class (or its path) and a hos_keras.fixed_blocks.BlockRecipe."
        )
    _RECIPES[block_class] = recipe


def recipe_for(layer) -> BlockRecipe | None:
    """The recipe of a layer's exact class, or `None`."""
    cls = type(layer)
    return _RECIPES.get(f"{cls.__module__}.{cls.__qualname__}")


def _register_keras_hub() -> None:
    models = "keras_hub.src.models"
    attention = "_self_attention_layer"
    gated = ("_feedforward_gate_dense",)
    mlp = Width("_feedforward_intermediate_dense", "units")
    for path in (
        "llama.llama_decoder.LlamaTransformerDecoder",
        "qwen.qwen_decoder.QwenTransformerDecoder",
    ):
        register_block_recipe(
            f"{models}.{path}", BlockRecipe({"intermediate_dim": mlp}, tied=gated)
        )
    register_block_recipe(
        f"{models}.mistral.mistral_transformer_decoder.MistralTransformerDecoder",
        BlockRecipe(
            {
                "intermediate_dim": mlp,
                "num_query_heads": Width(attention, "heads"),
                "num_key_value_heads": Width(attention, "kv_heads"),
                "head_dim": Width(attention, "attribute", name="_head_dim"),
            },
            tied=gated,
        ),
    )
    register_block_recipe(
        f"{models}.gemma.gemma_decoder_block.GemmaDecoderBlock",
        BlockRecipe(
            {
                "intermediate_dim": Width("gating_ffw", "units", factor=2),
                "num_query_heads": Width("attention", "heads"),
                "num_key_value_heads": Width("attention", "kv_heads"),
            },
            tied=("gating_ffw_2",),
        ),
    )


_register_keras_hub()
