"""Transformers: attention heads and MLP widths pruned exactly, slimmed and reloaded.

Every equivalence goes through the power-checked helpers of `invariants`: the
slim model against the masked one, with the mask of a plan one channel different
as the decoy.
"""

import functools
import warnings

import keras
import numpy as np
import pytest
import zoo
from invariants import (
    assert_equivalent,
    check_invariant,
    check_reload,
    different_plan,
    outputs,
)
from keras import layers

import hos_keras
from hos_keras import carried


def _plan(model, **options):
    """plan_pruning with its 'does not prune' warning silenced (transformers
    freeze their hidden width on purpose)."""
    options = {"criterion": "random", "allocation": "fixed", **options}
    if options["allocation"] == "fixed":
        options.setdefault("ratio", 0.3)
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


# Attention heads ------------------------------------------------------------------


def _attention_block(attention, query_shape=(6, 16), value_shape=None):
    """norm -> attention (self, or cross to a second input) -> residual add."""
    query = keras.Input(query_shape, name="query")
    inputs = [query]
    x = layers.LayerNormalization(name="norm")(query)
    if value_shape is None:
        y = attention(x, x)
    else:
        value = keras.Input(value_shape, name="value")
        inputs.append(value)
        y = attention(x, value)
    x = layers.Add(name="residual")([query, y])
    outputs = layers.Dense(3, name="head")(layers.Flatten()(x))
    inputs = inputs if len(inputs) > 1 else query
    return keras.Model(inputs, outputs, name=f"{attention.name}_block")


def test_attention_heads_are_one_group(tmp_path):
    attention = layers.MultiHeadAttention(
        num_heads=4, key_dim=5, value_dim=3, use_gate=True, name="att"
    )
    model = _attention_block(attention)
    graph = hos_keras.channel_groups(model, warn=False)
    assert [(g.name, g.channels) for g in graph.prunable] == [("att", 4)]
    plan = _plan(model, criterion="l1", ratio=0.5)
    slim = check_invariant(model, plan)
    assert slim.get_layer("att").num_heads == len(plan["att"].keep) == 2
    check_reload(slim, model, plan, tmp_path / "att.keras")


def test_grouped_query_attention_prunes_whole_key_value_groups(tmp_path):
    attention = layers.GroupQueryAttention(
        head_dim=4, num_query_heads=6, num_key_value_heads=3, name="gqa"
    )
    model = _attention_block(attention)
    graph = hos_keras.channel_groups(model, warn=False)
    assert [(g.name, g.channels) for g in graph.prunable] == [("gqa", 3)]
    assert hos_keras.attention.attention_units(attention) == (3, 2)
    plan = _plan(model, criterion="l1", ratio=0.3)
    keep = plan["gqa"].keep
    assert len(keep) == 2
    slim = check_invariant(model, plan)
    rebuilt = slim.get_layer("gqa")
    assert (rebuilt.num_key_value_heads, rebuilt.num_query_heads) == (2, 4)
    # Query heads 2u and 2u + 1 went with key/value head u.
    query = np.asarray(attention._query_dense.kernel)
    kept_query = np.concatenate([[2 * u, 2 * u + 1] for u in keep])
    np.testing.assert_array_equal(
        np.asarray(rebuilt._query_dense.kernel), query[:, kept_query]
    )
    check_reload(slim, model, plan, tmp_path / "gqa.keras")


def test_a_heads_filter_holds_every_weight_of_the_head():
    attention = layers.MultiHeadAttention(num_heads=3, key_dim=4, name="att")
    model = _attention_block(attention, query_shape=(5, 8))
    filters = hos_keras.filter_matrix(attention)
    per_head = [
        int(np.prod(w.shape)) // 3 for w in attention.weights if w.shape[0] == 3
    ] + [
        int(np.prod(w.shape)) // 3
        for w in attention.weights
        if len(w.shape) > 1 and w.shape[1] == 3
    ]
    assert filters.shape == (sum(per_head), 3)
    # Head 1's weights, gathered from each projection by hand.
    parts = []
    for sub in ("_query_dense", "_key_dense", "_value_dense"):
        dense = getattr(attention, sub)
        parts += [np.asarray(dense.kernel)[:, 1].ravel(), np.asarray(dense.bias)[1]]
    parts.append(np.asarray(attention._output_dense.kernel)[1].ravel())
    np.testing.assert_array_equal(
        np.sort(filters[:, 1]), np.sort(np.concatenate(parts))
    )
    assert model.get_layer("att") is attention


def test_profile_counts_attention_by_hand():
    # Cross-attention: T = 6 query positions of width 16, S = 4 value positions
    # of width 8; 3 heads of key size 5 and value size 2; output width 16.
    attention = layers.MultiHeadAttention(
        num_heads=3, key_dim=5, value_dim=2, name="att"
    )
    model = _attention_block(attention, query_shape=(6, 16), value_shape=(4, 8))
    t, s, d_q, d_v, h, k, v = 6, 4, 16, 8, 3, 5, 2
    macs = (
        t * d_q * h * k  # query projection
        + s * d_v * h * k  # key projection
        + s * d_v * h * v  # value projection
        + t * s * h * k  # QK^T
        + t * s * h * v  # AV
        + t * h * v * d_q  # output projection
    )
    cost = hos_keras.profile(model)["layers"]["att"]
    assert cost == {
        "type": "MultiHeadAttention",
        "params": attention.count_params(),
        "macs": macs,
    }
    one_head = hos_keras.profile(model, out_channels={"att": 1})["layers"]["att"]
    assert (
        one_head["macs"]
        == t * d_q * k + s * d_v * (k + v) + t * s * (k + v) + t * v * d_q
    )
    assert one_head["params"] == (d_q + 1) * k + (d_v + 1) * (k + v) + v * d_q + d_q


def test_attention_that_returns_its_scores_freezes():
    query = keras.Input((6, 16))
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="att")
    y, scores = attention(query, query, return_attention_scores=True)
    x = layers.Concatenate()([layers.Flatten()(y), layers.Flatten()(scores)])
    model = keras.Model(query, layers.Dense(3)(x))
    frozen = hos_keras.channel_groups(model, warn=False).group("att").frozen
    assert frozen.startswith("returns attention scores")


# keras-hub transformer backbones ------------------------------------------------

# Families whose heads and MLP widths prune; CLIP's quick_gelu activation is not
# registered with Keras, so its slim model (like its own layers) cannot be
# reloaded from a .keras file.
PRUNED_FAMILIES = [
    "ViTBackbone",
    "DINOV2Backbone",
    "CLIPVisionEncoder",
    "BertBackbone",
    "DistilBertBackbone",
    "RobertaBackbone",
    "ElectraBackbone",
    "WhisperBackbone",
    "GemmaBackbone",
    "MistralBackbone",
]
NOT_RELOADABLE = {"CLIPVisionEncoder"}


def _live_kernels(model, seed=0):
    """Kernels drawn from N(0, 0.3^2): keras-hub's initialisers (std 0.02) make
    the attention and MLP branches so small beside the embeddings that a plan
    one channel different hardly changes the outputs (no power)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith("kernel") and len(variable.shape) >= 2:
            variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    return model


def _check_token_model(model, plan, path):
    """slim == mask (and reload, given a path) for models with token-id inputs."""
    x = zoo.transformer_inputs(model)
    slim = hos_keras.slim_model(model, plan)
    decoy = outputs(hos_keras.mask_model(model, different_plan(plan)), x)
    expected = outputs(hos_keras.mask_model(model, plan), x)
    assert_equivalent(expected, outputs(slim, x), decoys=[decoy], name=model.name)
    cost = hos_keras.profile(slim)
    assert (cost["params"], cost["macs"]) == (plan.params_after, plan.macs_after)
    if path is None:
        return
    slim.save(path)
    loaded = keras.models.load_model(path)
    assert_equivalent(
        outputs(slim, x),
        outputs(loaded, x),
        decoys=[decoy],
        name=f"{model.name} reloaded",
        rtol=1e-5,
    )


@pytest.mark.parametrize("family", PRUNED_FAMILIES)
# CLIPVisionEncoder takes a dict of one image input, random_inputs gives the array.
@pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")
def test_hub_transformer_prunes_heads_and_mlp_widths(family, tmp_path):
    model = _live_kernels(zoo.hub_transformer(family))
    plan = _plan(model)
    assert plan.macs_reduction >= 0.2
    kinds = {type(_group_layer(model, name)).__name__ for name in plan.groups}
    assert any("Attention" in kind for kind in kinds), kinds
    assert kinds & {"Dense", "EinsumDense"}, kinds
    if any(t.dtype.startswith("int") for t in model.inputs):
        _check_token_model(model, plan, tmp_path / "slim.keras")
        return
    slim = check_invariant(model, plan)
    if family not in NOT_RELOADABLE:
        check_reload(slim, model, plan, tmp_path / "slim.keras")


def _group_layer(model, name):
    return hos_keras.channel_groups(model, warn=False).layers[name]


def test_transformer_blocks_list_heads_and_mlp_groups_per_block():
    bert = zoo.hub_transformer("BertBackbone")
    blocks = hos_keras.transformer_blocks(bert)
    assert [b.name for b in blocks] == ["transformer_layer_0", "transformer_layer_1"]
    first = blocks[0]
    assert first.attention == ("transformer_layer_0/self_attention_layer",)
    assert (first.units, first.heads_per_unit) == ((2,), (1,))
    assert first.mlp == ("transformer_layer_0/feedforward_intermediate_dense",)
    assert first.frozen == {}
    # DINOv2 wraps its attention layer in a layer of its own: the block is the
    # path that holds both the wrapper and the MLP.
    dino = hos_keras.transformer_blocks(zoo.hub_transformer("DINOV2Backbone"))
    assert [(b.name, b.mlp) for b in dino] == [
        (f"encoder/layers_{k}", (f"encoder/layers_{k}/mlp/fc1",)) for k in (0, 1)
    ]
    gqa = _attention_block(
        layers.GroupQueryAttention(
            head_dim=4, num_query_heads=6, num_key_value_heads=3, name="gqa"
        )
    )
    (block,) = hos_keras.transformer_blocks(gqa)
    assert (block.name, block.attention, block.units, block.heads_per_unit) == (
        "",
        ("gqa",),
        (3,),
        (2,),
    )


@pytest.mark.parametrize("criterion", ["taylor", "head_importance"])
def test_data_criteria_score_attention_heads(criterion):
    # Per-head references are in test_head_criteria.py; here: the heads get one
    # score each from the data, the weakest goes, and the slim model is exact.
    model = _attention_block(layers.MultiHeadAttention(4, 4, name="att"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 16)).astype("float32")
    plan = _plan(
        model, criterion=criterion, data=(x, rng.integers(0, 3, 16)), ratio=0.25
    )
    scores = plan["att"].scores
    assert scores.shape == (4,) and np.all(scores > 0) and np.ptp(scores) > 0
    np.testing.assert_array_equal(plan["att"].pruned, [np.argmin(scores)])
    check_invariant(model, plan)


@pytest.mark.parametrize("task", ["ViTImageClassifier", "BertTextClassifier"])
def test_classifier_on_a_backbone_keeps_each_blocks_own_widths(task, tmp_path):
    import keras_hub

    family = "ViTBackbone" if task.startswith("ViT") else "BertBackbone"
    backbone = _live_kernels(zoo.hub_transformer(family))
    model = getattr(keras_hub.models, task)(backbone, num_classes=3)
    plan = _plan(model, criterion="l1", allocation="global", fraction=0.4)
    slim = hos_keras.slim_model(model, plan)
    # A plain functional model, the keras-hub task class not kept.
    assert type(slim).__name__ == "Functional"
    blocks = hos_keras.transformer_blocks(model)
    widths = {
        (len(plan[b.attention[0]].keep), len(plan[b.mlp[0]].keep)) for b in blocks
    }
    assert len(widths) == len(blocks), widths  # each block its own widths
    if family == "ViTBackbone":
        check_invariant(model, plan)
        check_reload(slim, model, plan, tmp_path / "classifier.keras")
    else:
        _check_token_model(model, plan, tmp_path / "classifier.keras")


@pytest.mark.parametrize(
    "family, heads",
    [("GemmaBackbone", True), ("MistralBackbone", True), ("QwenBackbone", False)],
)
def test_decoder_blocks_are_recreated_with_their_pruned_widths(family, heads):
    model = _live_kernels(zoo.hub_transformer(family))
    blocks = hos_keras.transformer_blocks(model)
    assert len(blocks) == 2 and all(b.mlp for b in blocks)
    attention = blocks[0].attention[0]
    frozen = hos_keras.channel_groups(model, warn=False).group(attention).frozen
    if not heads:
        # Qwen derives its head size from hidden_dim // num_query_heads.
        assert frozen.startswith("a width the config of QwenTransformerDecoder")
    plan = _plan(model, ratio=0.5)
    slim = hos_keras.slim_model(model, plan)
    for block in blocks:
        rebuilt = slim.get_layer(block.name)
        assert type(rebuilt) is type(model.get_layer(block.name))
        config = rebuilt.get_config()
        assert config["intermediate_dim"] < model.get_layer(block.name).intermediate_dim
        if heads:
            units = len(plan[attention].keep)
            assert (config["num_key_value_heads"], config["num_query_heads"]) == (
                units,
                2 * units,
            )
    x = zoo.transformer_inputs(model)
    decoy = outputs(hos_keras.mask_model(model, different_plan(plan)), x)
    expected = outputs(hos_keras.mask_model(model, plan), x)
    assert_equivalent(expected, outputs(slim, x), decoys=[decoy], name=model.name)


def test_decoder_blocks_that_cannot_be_recreated_freeze():
    # keras-hub 0.32's LlamaTransformerDecoder.get_config reads an attribute it
    # no longer has: the block cannot be re-created on its own.
    model = zoo.hub_transformer("LlamaBackbone")
    reason = hos_keras.graph.layer_view(
        model.get_layer("transformer_layer_0"),
        model.get_layer("transformer_layer_0")._inbound_nodes[0],
    )
    assert "get_config fails (AttributeError" in reason
    with pytest.raises(hos_keras.errors.NothingToPruneError):
        _plan(model)


def test_a_carried_layer_gets_the_training_flag():
    @keras.saving.register_keras_serializable(package="test_transformers")
    class NoisyOffset(_OffsetWithBadConfig):
        def call(self, x, training=None):
            return x + self.offset + (1.0 if training else 0.0)

    inputs = keras.Input((6,))
    x = NoisyOffset(6, name="offset")(inputs)
    x = layers.Dense(16, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, layers.Dense(3, name="out")(x))
    slim = hos_keras.slim_model(model, _plan(model, criterion="l1"))
    carried_layer = slim.get_layer("offset")
    assert isinstance(carried_layer, carried.CarriedLayer)
    x = np.zeros((2, 6), "float32")
    difference = carried_layer(x, training=True) - carried_layer(x, training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(difference), 1.0)


def test_a_causal_lm_slims_and_counts_its_logits():
    import keras_hub

    backbone = _live_kernels(zoo.hub_transformer("GemmaBackbone"))
    model = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    cost = hos_keras.profile(model)["layers"]
    # One position: the lookup costs nothing, the tied reverse call (the logits)
    # hidden * vocabulary.
    assert cost["token_embedding"]["macs"] == 32 * 100
    assert cost[f"{backbone.name}/token_embedding"]["macs"] == 0
    # The shared embedding's parameters count once.
    assert hos_keras.profile(model)["params"] == model.count_params()
    plan = _plan(model)
    assert plan.macs_reduction >= 0.2
    _check_token_model(model, plan, None)


# Uniform plans and keras-hub classes kept -----------------------------------------


def _causal_lm(family, seed=0):
    import keras_hub

    backbone = _live_kernels(zoo.hub_transformer(family), seed)
    task = getattr(keras_hub.models, family.replace("Backbone", "CausalLM"))
    return task(backbone=backbone, preprocessor=None)


def test_uniform_plan_keeps_the_mean_count_of_each_role_by_its_own_scores():
    model = _causal_lm("GemmaBackbone")
    plan = _plan(model, criterion="l1", allocation="global", fraction=0.3)
    uniform = hos_keras.uniform_plan(model, plan)
    blocks = hos_keras.transformer_blocks(model)
    for role in zip(*(b.groups for b in blocks), strict=True):
        count = round(np.mean([len(plan[name].keep) for name in role]))
        for name in role:
            entry = uniform[name]
            # The `count` best-scoring channels of this block, by hand.
            best = sorted(range(entry.channels), key=lambda c: -plan[name].scores[c])
            assert entry.keep.tolist() == sorted(best[:count]), name
            assert entry.ratio == pytest.approx(1 - count / entry.channels)
    # The global allocation leaves different MLP widths; uniform ones are equal.
    mlp = [len(plan[b.mlp[0]].keep) for b in blocks]
    assert len(set(mlp)) > 1
    assert uniform.details["uniform"]
    slim = hos_keras.slim_model(model, uniform)
    cost = hos_keras.profile(slim)
    assert (cost["params"], cost["macs"]) == (uniform.params_after, uniform.macs_after)


def _generation_matches_mask(lm, masked, prompt, length):
    """Greedy generation from `lm`; every generated token is the masked model's
    argmax after the tokens before it."""
    lm.compile(sampler="greedy")
    tokens = lm.generate(prompt, max_length=length, stop_token_ids=None)["token_ids"]
    given = int(prompt["padding_mask"][0].sum())
    assert tokens.shape == (1, length)
    np.testing.assert_array_equal(tokens[0, :given], prompt["token_ids"][0, :given])
    full = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    logits = outputs(masked, full)[0][0]
    np.testing.assert_array_equal(
        tokens[0, given:], np.argmax(logits[given - 1 : length - 1], axis=-1)
    )
    return tokens


@pytest.mark.parametrize(
    "family, options",
    [
        ("GemmaBackbone", {"ratio": 0.5}),  # heads and MLP
        ("MistralBackbone", {"ratio": 0.5}),  # heads (GQA) and MLP
        ("QwenBackbone", {}),  # MLP
    ],
)
def test_a_uniformly_pruned_causal_lm_keeps_its_class_generates_and_reloads(
    family, options, tmp_path
):
    model = _causal_lm(family)
    plan = hos_keras.uniform_plan(model, _plan(model, **options))
    pruned = [n for n, g in plan.groups.items() if len(g.keep) < g.channels]
    if family != "QwenBackbone":  # Qwen's heads freeze
        assert any("attention" in n for n in pruned)
    slim = hos_keras.slim_model(model, plan)
    assert type(slim) is type(model) and type(slim.backbone) is type(model.backbone)
    config = slim.backbone.get_config()
    assert config["intermediate_dim"] < model.backbone.intermediate_dim
    x = zoo.transformer_inputs(model)
    masked = hos_keras.mask_model(model, plan)
    decoy = outputs(hos_keras.mask_model(model, different_plan(plan)), x)
    assert_equivalent(outputs(masked, x), outputs(slim, x), decoys=[decoy], name=family)
    cost = hos_keras.profile(slim)
    assert (cost["params"], cost["macs"]) == (plan.params_after, plan.macs_after)
    prompt = {
        "token_ids": np.array([[3, 14, 15, 92, 65, 0, 0, 0, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]], "int32"),
    }
    tokens = _generation_matches_mask(slim, masked, prompt, 10)
    slim.save(tmp_path / "lm.keras")
    loaded = keras.models.load_model(tmp_path / "lm.keras")
    assert type(loaded) is type(model)
    assert_equivalent(
        outputs(slim, x), outputs(loaded, x), decoys=[decoy], name=f"{family} loaded"
    )
    loaded.compile(sampler="greedy")
    again = loaded.generate(prompt, max_length=10, stop_token_ids=None)["token_ids"]
    np.testing.assert_array_equal(again, tokens)


def test_a_causal_lm_that_cannot_keep_its_class_says_why():
    model = _causal_lm("GemmaBackbone")
    plan = _plan(model, criterion="l1", allocation="global", fraction=0.3)
    with pytest.warns(UserWarning, match="keep different 'intermediate_dim'"):
        slim = hos_keras.slim_model(model, plan)
    assert type(slim).__name__ == "Functional"


def test_a_backbone_config_that_derives_a_pruned_size_keeps_no_class(monkeypatch):
    # A MistralBackbone config without head_dim (as older keras-hub wrote them)
    # derives the head size from hidden_dim // num_query_heads: with fewer heads
    # the re-created blocks would not fit the sliced weights.
    import keras_hub

    model = _causal_lm("MistralBackbone")
    plan = hos_keras.uniform_plan(model, _plan(model, ratio=0.5))
    config = keras_hub.models.MistralBackbone.get_config

    def without_head_dim(self):
        return {k: v for k, v in config(self).items() if k != "head_dim"}

    monkeypatch.setattr(
        keras_hub.models.MistralBackbone, "get_config", without_head_dim
    )
    with pytest.warns(UserWarning, match="re-creates .* with the pruned shapes"):
        slim = hos_keras.slim_model(model, plan)
    assert type(slim).__name__ == "Functional"
    x = zoo.transformer_inputs(model)
    decoy = outputs(hos_keras.mask_model(model, different_plan(plan)), x)
    expected = outputs(hos_keras.mask_model(model, plan), x)
    assert_equivalent(expected, outputs(slim, x), decoys=[decoy], name="mistral")


def test_the_hidden_width_left_whole_by_default_is_not_warned_about():
    model = _causal_lm("GemmaBackbone")
    # Only the token embedding freezes the stream here, by default.
    frozen = hos_keras.channel_groups(model, warn=False).frozen
    assert any("the hidden width" in reason for reason in frozen.values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hos_keras.plan_pruning(model, criterion="l1", allocation="fixed", ratio=0.3)
    assert not [w for w in caught if "does not prune" in str(w.message)]
