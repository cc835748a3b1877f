"""Pruning a transformer's hidden width (opt-in, inexact): a hand-built block
against numpy, the reported error against the measured one, keras-hub ViT and
BERT classifiers slimmed, saved and reloaded."""

import warnings

import keras
import numpy as np
import pytest
import zoo
from keras import layers

import hos_keras

pytestmark = pytest.mark.filterwarnings("ignore:hidden_width=True:UserWarning")

VOCAB, LENGTH, D, HEADS, KEY, MLP, CLASSES = 50, 8, 16, 4, 4, 32, 5


def _block() -> keras.Model:
    tokens = keras.Input((LENGTH,), dtype="int32", name="tokens")
    x = layers.Embedding(VOCAB, D, name="embed")(tokens)
    h = layers.LayerNormalization(name="ln1")(x)
    h = layers.MultiHeadAttention(HEADS, KEY, name="att")(h, h)
    x = layers.Add(name="add1")([x, h])
    h = layers.LayerNormalization(name="ln2")(x)
    h = layers.Dense(MLP, activation="relu", name="up")(h)
    h = layers.Dense(D, name="down")(h)
    x = layers.Add(name="add2")([x, h])
    x = layers.LayerNormalization(name="ln3")(x)
    model = keras.Model(tokens, layers.Dense(CLASSES, name="head")(x))
    rng = np.random.default_rng(1)
    for layer in model.layers:
        # Non-trivial norms and biases, so that slicing them is checked.
        layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    return model


def _plan(model, **kwargs):
    return hos_keras.plan_pruning(
        model, "l1", "fixed", ratio=0.25, hidden_width=True, **kwargs
    )


def _weights(model) -> dict:
    return {layer.name: layer.get_weights() for layer in model.layers}


def _layer_norm(x, gamma, beta, epsilon=1e-3):
    mean = x.mean(-1, keepdims=True)
    variance = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _numpy_block(weights, tokens):
    """The hand-built block in numpy, from (already sliced) weights."""
    x = weights["embed"][0][tokens]
    h = _layer_norm(x, *weights["ln1"])
    wq, bq, wk, bk, wv, bv, wo, bo = weights["att"]
    q = np.einsum("btd,dhk->bthk", h, wq) + bq
    k = np.einsum("btd,dhk->bthk", h, wk) + bk
    v = np.einsum("btd,dhk->bthk", h, wv) + bv
    logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(KEY)
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    heads = np.einsum("bhts,bshk->bthk", attention, v)
    x = x + np.einsum("bthk,hkd->btd", heads, wo) + bo
    h = _layer_norm(x, *weights["ln2"])
    h = np.maximum(h @ weights["up"][0] + weights["up"][1], 0)
    x = x + h @ weights["down"][0] + weights["down"][1]
    x = _layer_norm(x, *weights["ln3"])
    return x @ weights["head"][0] + weights["head"][1]


def _sliced_by_hand(weights, hidden, heads, units) -> dict:
    """Every weight indexed with numpy at the kept hidden channels, heads and
    MLP units: the reference for slim_model's weights."""
    wq, bq, wk, bk, wv, bv, wo, bo = weights["att"]
    return {
        "embed": [weights["embed"][0][:, hidden]],
        "ln1": [w[hidden] for w in weights["ln1"]],
        "att": [
            wq[hidden][:, heads],
            bq[heads],
            wk[hidden][:, heads],
            bk[heads],
            wv[hidden][:, heads],
            bv[heads],
            wo[heads][:, :, hidden],
            bo[hidden],
        ],
        "ln2": [w[hidden] for w in weights["ln2"]],
        "up": [weights["up"][0][hidden][:, units], weights["up"][1][units]],
        "down": [weights["down"][0][units][:, hidden], weights["down"][1][hidden]],
        "ln3": [w[hidden] for w in weights["ln3"]],
        "head": [weights["head"][0][hidden], weights["head"][1]],
    }


def test_default_plan_keeps_the_hidden_width_frozen():
    model = _block()
    plan = hos_keras.plan_pruning(model, "l1", "fixed", ratio=0.25)
    assert set(plan.groups) == {"att", "up"}
    assert plan.frozen["down"].startswith("embeds tokens")
    assert "hidden_width" not in plan.details
    slim = hos_keras.slim_model(model, plan)
    assert slim.get_layer("embed").output_dim == D


def test_hidden_width_is_one_group_sliced_like_numpy_indexing():
    model = _block()
    with pytest.warns(UserWarning, match="not exact"):
        plan = _plan(model)
    stream = plan["embed"]
    assert stream.producers == ("embed", "down")
    assert {"ln1", "ln2", "ln3", "att", "up", "head"} <= set(stream.members)
    assert len(stream.keep) == 12
    slim = hos_keras.slim_model(model, plan)
    expected = _sliced_by_hand(
        _weights(model), stream.keep, plan["att"].keep, plan["up"].keep
    )
    for name, arrays in expected.items():
        got = slim.get_layer(name).get_weights()
        assert len(got) == len(arrays), name
        for a, b in zip(got, arrays, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    cost = hos_keras.profile(slim)
    assert (cost["params"], cost["macs"]) == (plan.params_after, plan.macs_after)


def test_slim_equals_numpy_with_norms_over_the_kept_channels():
    model = _block()
    plan = _plan(model)
    slim = hos_keras.slim_model(model, plan)
    tokens = np.random.default_rng(3).integers(0, VOCAB, size=(6, LENGTH))
    reference = _numpy_block(
        _sliced_by_hand(
            _weights(model), plan["embed"].keep, plan["att"].keep, plan["up"].keep
        ),
        tokens,
    )
    np.testing.assert_allclose(
        np.asarray(slim(tokens)), reference, rtol=1e-4, atol=1e-4
    )


def test_masked_model_zeroes_the_removed_stream_channels():
    model = _block()
    plan = _plan(model)
    masked = hos_keras.mask_model(model, plan)
    removed = plan["embed"].pruned
    assert len(removed) == 4
    embedded = keras.Model(masked.input, masked.get_layer("add2").output)
    tokens = np.random.default_rng(4).integers(0, VOCAB, size=(3, LENGTH))
    np.testing.assert_array_equal(np.asarray(embedded(tokens))[..., removed], 0)


def test_reported_error_is_the_measured_slim_against_masked_error():
    model = _block()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = _plan(model)
    report = plan.details["hidden_width"]
    assert report["inputs"] == "random" and report["kept"] == 12
    assert report["channels"] == D and report["group"] == "embed"
    # The probe the docstring describes: 4 examples, tokens below the vocabulary.
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(4, LENGTH))
    slim = np.asarray(hos_keras.slim_model(model, plan)(tokens), np.float64)
    masked = np.asarray(hos_keras.mask_model(model, plan)(tokens), np.float64)
    measured = np.linalg.norm(slim - masked) / np.linalg.norm(masked)
    assert report["relative_error"] == pytest.approx(measured, rel=1e-4)
    assert report["max_abs_error"] == pytest.approx(np.abs(slim - masked).max())
    assert 0.01 < measured < 1.0  # inexact, as the warning says
    assert any(f"{measured:.3g}" in str(w.message) for w in caught)


def test_given_data_is_the_probe():
    model = _block()
    tokens = np.random.default_rng(5).integers(0, VOCAB, size=(8, LENGTH))
    plan = hos_keras.plan_pruning(
        model,
        "activation_k34",
        "fixed",
        ratio=0.25,
        hidden_width=True,
        data=(tokens, np.zeros(8)),
    )
    assert plan.details["hidden_width"]["inputs"] == "data"
    slim = np.asarray(hos_keras.slim_model(model, plan)(tokens), np.float64)
    masked = np.asarray(hos_keras.mask_model(model, plan)(tokens), np.float64)
    measured = np.linalg.norm(slim - masked) / np.linalg.norm(masked)
    assert plan.details["hidden_width"]["relative_error"] == pytest.approx(
        measured, rel=1e-4
    )


def test_hidden_width_must_be_a_bool():
    with pytest.raises(hos_keras.errors.InvalidArgumentError, match="hidden_width"):
        hos_keras.plan_pruning(_block(), "l1", "fixed", ratio=0.25, hidden_width=1)


def test_a_backbone_whose_stream_is_its_output_says_why():
    # The backbone returns the hidden states: their width is the model's output.
    with pytest.raises(hos_keras.errors.NothingToPruneError, match="model output"):
        _plan(zoo.hub_transformer("BertBackbone"))


@pytest.mark.parametrize(
    "task, family",
    [("ViTImageClassifier", "ViTBackbone"), ("BertTextClassifier", "BertBackbone")],
)
def test_hub_classifier_slims_runs_and_reloads(task, family, tmp_path):
    import keras_hub

    backbone = zoo.hub_transformer(family)
    model = getattr(keras_hub.models, task)(backbone, num_classes=3)
    plan = _plan(model)
    stream = plan.details["hidden_width"]
    assert stream["kept"] == stream["channels"] * 3 // 4
    assert 0 < stream["relative_error"] < 1
    slim = hos_keras.slim_model(model, plan)
    x = zoo.transformer_inputs(model)
    out = np.asarray(slim(x))
    assert out.shape == (4, 3) and np.all(np.isfinite(out))
    assert hos_keras.profile(slim)["params"] == plan.params_after
    norms = [
        layer
        for layer in slim._flatten_layers()
        if isinstance(layer, layers.LayerNormalization)
    ]
    assert norms and all(n.gamma.shape == (stream["kept"],) for n in norms)
    slim.save(tmp_path / "slim.keras")
    loaded = keras.models.load_model(tmp_path / "slim.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), out, rtol=1e-5, atol=1e-6)
