"""Data criteria on attention heads, and head importance, against references by hand.

A head's feature map is its own output, the value-weighted sum the output
projection reads. The references recompute it with numpy einsums from the
layer's weights, and the loss gradients at it with a gradient tape on a gated
re-implementation of the model, or by finite differences of a gate (the head's
rows of the output projection scaled by 1 +- delta). Head importance (Michel et
al., NeurIPS 2019) is also checked against what it predicts: the loss change of
masking each head.
"""

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
import zoo
from invariants import check_invariant
from keras import layers
from test_transformers import _check_token_model, _live_kernels, _plan

import hos_keras
from hos_keras import criteria
from hos_keras.attention import attention_units

# A query sequence of T positions of width D; H heads of key size K, value size V.
T, D, H, K, V = 6, 8, 3, 4, 5


def _mha_model(seed=0, output_scale=(1.0, 1.0, 1.0), logits_scale=0.05):
    """x -> self-attention -> residual -> ReLU MLP (width 10) -> residual ->
    logits, weights from N(0, 0.5^2). The scales shrink each head's rows of the
    output projection and the logits kernel."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((T, D))
    attention = layers.MultiHeadAttention(H, K, value_dim=V, name="att")
    x = layers.Add()([inputs, attention(inputs, inputs)])
    y = layers.Dense(10, activation="relu", name="up")(x)
    x = layers.Add()([x, layers.Dense(D, name="down")(y)])
    logits = layers.Dense(3, name="logits")(layers.Flatten()(x))
    model = keras.Model(inputs, logits, name="mha")
    rng = np.random.default_rng(seed)
    for variable in model.weights:  # biases too: every term of the reference
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
    out = attention._output_dense.kernel
    out.assign(np.asarray(out) * np.reshape(output_scale, (H, 1, 1)))
    kernel = model.get_layer("logits").kernel
    kernel.assign(np.asarray(kernel) * logits_scale)
    return model


def _data(n=16, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, T, D)).astype("float32")
    return x, rng.integers(0, 3, n).astype("int32")


def _weights(model):
    """Every weight of the model by name, float64."""
    att = model.get_layer("att")
    w = {}
    for part in ("query", "key", "value", "output"):
        dense = getattr(att, f"_{part}_dense")
        w[part] = np.asarray(dense.kernel, np.float64)
        w[part + "_b"] = np.asarray(dense.bias, np.float64)
    for name in ("up", "down", "logits"):
        w[name] = np.asarray(model.get_layer(name).kernel, np.float64)
        w[name + "_b"] = np.asarray(model.get_layer(name).bias, np.float64)
    return w


def _head_outputs(w, x):
    """(N, T, H, V): each head's softmax(q k^T / sqrt(K)) v, by numpy einsums."""
    q = np.einsum("ntd,dhk->nthk", x, w["query"]) + w["query_b"]
    k = np.einsum("ntd,dhk->nthk", x, w["key"]) + w["key_b"]
    v = np.einsum("ntd,dhv->nthv", x, w["value"]) + w["value_b"]
    logits = np.einsum("nthk,nshk->nhts", q, k) / np.sqrt(K)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("nhts,nshv->nthv", probs, v)


def _gated_loss(w, x, y, heads, gates, unit_gates):
    """Per-sample cross-entropy of the model re-implemented by hand, the heads'
    outputs times `gates` (N, H) and the MLP units' outputs times `unit_gates`
    (N, 10)."""
    gated = heads * gates[:, None, :, None]
    h = x + tf.einsum("nthv,hvd->ntd", gated, w["output"]) + w["output_b"]
    up = tf.nn.relu(tf.einsum("ntd,de->nte", h, w["up"]) + w["up_b"])
    h = h + tf.einsum("nte,ed->ntd", up * unit_gates[:, None, :], w["down"])
    h = h + w["down_b"]
    logits = tf.reshape(h, (len(x), -1)) @ w["logits"] + w["logits_b"]
    return -tf.gather(tf.nn.log_softmax(logits), y, batch_dims=1)


def _gate_gradients(model, x, y):
    """Per sample, dL/d gate of each head (N, H) and of each MLP unit (N, 10)."""
    w = _weights(model)
    x64 = x.astype(np.float64)
    heads = _head_outputs(w, x64)
    gates = tf.ones((len(x), H), tf.float64)
    unit_gates = tf.ones((len(x), 10), tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([gates, unit_gates])
        loss = tf.reduce_sum(_gated_loss(w, x64, y, heads, gates, unit_gates))
    head_grads, unit_grads = tape.gradient(loss, [gates, unit_gates])
    return heads, head_grads.numpy(), unit_grads.numpy()


def _per_head(heads):
    """(N, H, V * T): each head's output of each sample as one vector."""
    return np.moveaxis(heads, 2, 1).reshape(len(heads), H, -1)


def test_the_gated_reference_is_the_model():
    # The hand-written model computes what the Keras model does, so its
    # gradients are the model's.
    model, (x, y) = _mha_model(), _data()
    w = _weights(model)
    heads = _head_outputs(w, x.astype(np.float64))
    loss = _gated_loss(
        w, x.astype(np.float64), y, heads, np.ones((16, H)), np.ones((16, 10))
    )
    expected = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None
    )(y, model(x))
    np.testing.assert_allclose(loss.numpy(), np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "criterion",
    ["taylor", "fisher", "dfs", "sfs", "activation_k34", "head_importance"],
)
def test_every_data_criterion_scores_heads_on_their_own_outputs(criterion):
    model, (x, y) = _mha_model(), _data()
    plan = _plan(model, criterion=criterion, data=(x, y), ratio=0.3)
    heads, grads, _ = _gate_gradients(model, x, y)
    per = _per_head(heads)  # the head's channels and positions as one map
    n = len(x)
    if criterion in ("taylor", "head_importance"):
        expected = np.abs(grads).mean(axis=0)
        if criterion == "head_importance":
            expected = expected / np.linalg.norm(expected)
    elif criterion == "fisher":
        # What one head costs, by hand: its query, key and value columns at T
        # positions, QK^T and AV, and its output-projection rows.
        macs = T * D * K * 2 + T * D * V + T * T * (K + V) + T * V * D
        expected = (grads**2).sum(axis=0) / macs
    elif criterion == "dfs":
        expected = per.std(axis=2).mean(axis=0)
    elif criterion == "sfs":
        unit = per / np.linalg.norm(per, axis=2, keepdims=True)
        similarity = np.einsum("nhp,ngp->hg", unit, unit) / n
        np.fill_diagonal(similarity, -np.inf)
        expected = -similarity.max(axis=1)
    else:
        values = np.moveaxis(per, 1, 0).reshape(H, -1)
        expected = [scipy.stats.kstat(v, 3) * scipy.stats.kstat(v, 4) for v in values]
    np.testing.assert_allclose(plan["att"].scores, expected, rtol=2e-4)
    assert plan.criterion == criterion
    # The weakest heads go.
    pruned = plan["att"].pruned
    assert len(pruned) == 1
    np.testing.assert_array_equal(pruned, np.argsort(expected)[:1])


def test_head_importance_is_the_gate_gradient_of_heads_and_units():
    model, (x, y) = _mha_model(), _data()
    _, head_grads, unit_grads = _gate_gradients(model, x, y)
    raw = criteria.HeadImportanceCriterion(normalize=False)
    plan = _plan(model, criterion=raw, data=(x, y))
    np.testing.assert_allclose(
        plan["att"].scores, np.abs(head_grads).mean(0), rtol=2e-4
    )
    # An MLP unit's gate: the first-order Taylor criterion of its output.
    np.testing.assert_allclose(plan["up"].scores, np.abs(unit_grads).mean(0), rtol=2e-4)
    taylor = _plan(model, criterion="taylor", data=(x, y))
    np.testing.assert_allclose(plan["up"].scores, taylor["up"].scores, rtol=1e-12)


def _masked_losses(model, x, y, mask):
    """Per-sample losses of a copy of `model` changed by `mask(copy)`."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    mask(copy)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    return np.asarray(loss(y, copy(x)), np.float64)


def _zero(variable, index):
    values = np.asarray(variable).copy()
    values[index] = 0.0
    variable.assign(values)


def test_head_importance_predicts_the_loss_change_of_masking_each_head():
    # Small output projection and logits kernel: masking a head or a unit
    # changes the logits a little, where the first-order expansion holds. The
    # heads' rows scaled apart, so that they rank far apart.
    model = _mha_model(seed=3, output_scale=(0.02, 0.008, 0.003), logits_scale=0.01)
    x, y = _data(32)
    plan = _plan(
        model, criterion=criteria.HeadImportanceCriterion(normalize=False), data=(x, y)
    )
    full = _masked_losses(model, x, y, lambda m: None)

    def head(h):
        return lambda m: _zero(m.get_layer("att")._output_dense.kernel, h)

    def unit(j):
        def mask(m):
            _zero(m.get_layer("up").kernel, (slice(None), j))
            _zero(m.get_layer("up").bias, j)

        return mask

    for group, masks in (("att", [head(h) for h in range(H)]), ("up", [])):
        if group == "up":
            masks = [unit(j) for j in range(10)]
        change = np.array(
            [np.abs(_masked_losses(model, x, y, m) - full).mean() for m in masks]
        )
        scores = plan[group].scores
        np.testing.assert_allclose(scores, change, rtol=0.02, err_msg=group)
        # Power: the units differ by far more than the tolerance, so a score
        # of another unit would fail.
        assert np.ptp(change) > 0.3 * change.max(), (group, change)
    np.testing.assert_array_equal(np.argsort(plan["att"].scores), [2, 1, 0])
    # The paper's per-layer normalisation divides by the l2 norm.
    normalised = _plan(model, criterion="head_importance", data=(x, y))
    for group in ("att", "up"):
        raw = plan[group].scores
        np.testing.assert_allclose(
            normalised[group].scores, raw / np.linalg.norm(raw), rtol=1e-12
        )


def test_grouped_query_attention_units_cover_their_query_heads():
    # 4 query heads, 2 key/value heads: unit u is key/value head u and query
    # heads 2u and 2u + 1.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, D))
    attention = layers.GroupQueryAttention(
        head_dim=4, num_query_heads=4, num_key_value_heads=2, name="gqa"
    )
    x = layers.Add()([inputs, attention(inputs, inputs)])
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(x)))
    data = _data()
    plan = _plan(model, criterion="dfs", data=data, ratio=0.5)
    taylor = _plan(model, criterion="taylor", data=data, ratio=0.5)
    # Each query head's output by numpy einsums, key and value heads repeated.
    w = {
        part: (
            np.asarray(getattr(attention, f"_{part}_dense").kernel, np.float64),
            np.asarray(getattr(attention, f"_{part}_dense").bias, np.float64),
        )
        for part in ("query", "key", "value")
    }
    x64 = data[0].astype(np.float64)
    q, k, v = (np.einsum("ntd,dhk->nthk", x64, w[p][0]) + w[p][1] for p in w)
    k, v = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)
    logits = np.einsum("nthk,nshk->nhts", q, k) / 2.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    heads = np.einsum("nhts,nshv->nthv", probs, v)  # (N, T, 4, 4)
    units = heads.reshape(16, T, 2, 2, 4)  # n, t, unit, query head of unit, v
    per_unit = np.moveaxis(units, 2, 1).reshape(16, 2, -1)
    np.testing.assert_allclose(
        plan["gqa"].scores, per_unit.std(axis=2).mean(0), rtol=1e-5
    )
    # Taylor: a gate on a unit scales both query heads' output-projection rows.
    out = attention._output_dense.kernel
    gradients = _finite_difference_gates(
        model, data, out, head_axis=0, heads_per_unit=2
    )
    np.testing.assert_allclose(
        taylor["gqa"].scores, np.abs(gradients).mean(0), rtol=2e-3
    )


def _finite_difference_gates(
    model, data, kernel, head_axis, heads_per_unit=1, loss=None, delta=1e-2
):
    """Per sample and unit, dL/d gate by central differences: the unit's rows
    of the output-projection kernel scaled by 1 +- delta."""
    x, y = data
    if loss is None:
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=None
        )
    original = np.asarray(kernel).copy()
    units = original.shape[head_axis] // heads_per_unit
    columns = []
    try:
        for u in range(units):
            rows = slice(u * heads_per_unit, (u + 1) * heads_per_unit)
            losses = []
            for sign in (1.0, -1.0):
                values = np.moveaxis(original.copy(), head_axis, 0)
                values[rows] *= 1.0 + sign * delta
                kernel.assign(np.moveaxis(values, 0, head_axis))
                losses.append(np.asarray(loss(y, model(x, training=False)), np.float64))
            columns.append((losses[0] - losses[1]) / (2 * delta))
    finally:
        kernel.assign(original)
    return np.stack(columns, axis=1)


def _output_projections(model, plan):
    """{head group: (output-projection kernel, its head axis)} of the plan's
    attention groups, the head axis read from the projection's equation."""
    graph = hos_keras.channel_groups(model, warn=False)
    found = {}
    for name in plan.groups:
        layer = graph.layers[name]
        if attention_units(layer) is None:
            continue
        dense = hos_keras.layer_rules.get_rule(layer).channel_source(layer)
        inputs, kernel = dense.equation.split("->")[0].split(",")
        found[name] = (dense.kernel, kernel.index(inputs[-2]))
    return found


def _hub_case(family):
    """A live-kernel keras-hub model of the family, calibration data and the
    per-sample loss the plan and the reference use."""
    import keras_hub

    backbone = _live_kernels(zoo.hub_transformer(family))
    rng = np.random.default_rng(0)
    if family in ("ViTBackbone", "BertBackbone"):
        task = "ViTImageClassifier" if family == "ViTBackbone" else "BertTextClassifier"
        model = getattr(keras_hub.models, task)(backbone, num_classes=3)
        x = (
            zoo.transformer_inputs(backbone, batch=8)
            if family == "BertBackbone"
            else rng.normal(size=(8, 32, 32, 3)).astype("float32")
        )
        y = rng.integers(0, 3, 8).astype("int32")
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=None
        )
        return model, (x, y), loss
    # A decoder backbone: a regression of its sequence output on random targets.
    x = zoo.transformer_inputs(backbone, batch=8)
    y = rng.normal(size=(8, 16, 32)).astype("float32")

    def loss(y, output):
        return keras.ops.mean((output - y) ** 2, axis=(1, 2))

    return backbone, (x, y), loss


@pytest.mark.parametrize(
    "family", ["ViTBackbone", "BertBackbone", "GemmaBackbone", "MistralBackbone"]
)
# The Bert classifier's inputs are a dict of its backbone's inputs.
@pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")
def test_keras_hub_heads_score_their_gates_and_slim_exactly(family):
    model, data, loss = _hub_case(family)
    taylor = _plan(
        model,
        criterion="taylor",
        data=data,
        calibration_loss=loss,
    )
    projections = _output_projections(model, taylor)
    assert len(projections) == 2, projections  # one attention layer per block
    graph = hos_keras.channel_groups(model, warn=False)
    units = {name: attention_units(graph.layers[name])[1] for name in projections}
    for name, (kernel, axis) in projections.items():
        gradients = _finite_difference_gates(
            model, data, kernel, axis, units[name], loss=loss
        )
        expected = np.abs(gradients).mean(0)
        np.testing.assert_allclose(
            taylor[name].scores, expected, rtol=5e-3, err_msg=name
        )
        # Power: the heads differ by more than the tolerance, so the scores of
        # other heads (or another layer's) would fail.
        assert np.ptp(expected) > 4 * 5e-3 * expected.max(), (name, expected)
    importance = _plan(
        model,
        criterion="head_importance",
        data=data,
        calibration_loss=loss,
    )
    for name in projections:
        raw = taylor[name].scores
        np.testing.assert_allclose(
            importance[name].scores, raw / np.linalg.norm(raw), rtol=1e-9
        )
    assert all(len(importance[name].pruned) for name in projections)
    for plan in (taylor, importance):
        if family == "ViTBackbone":
            check_invariant(model, plan)
        else:
            _check_token_model(model, plan, None)


@keras.saving.register_keras_serializable(package="test_head_criteria")
class _FusedOutputAttention(layers.MultiHeadAttention):
    """Multi-head attention that applies its output projection's kernel itself
    instead of calling the projection."""

    def call(self, query, value, key=None):
        key = value if key is None else key
        heads, _ = self._compute_attention(
            self._query_dense(query), self._key_dense(key), self._value_dense(value)
        )
        dense = self._output_dense
        return keras.ops.einsum(dense.equation, heads, dense.kernel) + dense.bias


def test_an_attention_layer_whose_heads_cannot_be_read_is_named():
    hos_keras.register_layer_rule(
        _FusedOutputAttention, hos_keras.attention.AttentionRule()
    )
    inputs = keras.Input((T, D))
    attention = _FusedOutputAttention(2, 4, name="fused")
    x = layers.Add()([inputs, attention(inputs, inputs)])
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(x)))
    assert [g.name for g in hos_keras.channel_groups(model, warn=False).prunable] == [
        "fused"
    ]
    with pytest.raises(
        hos_keras.errors.InvalidArgumentError,
        match=r"Layer 'fused' did not run its output projection.*weight criterion",
    ):
        _plan(model, criterion="taylor", data=_data())
    # Its output projection was given back: the model still runs as before.
    assert "call" not in vars(attention._output_dense)
    assert _plan(model, criterion="l1")["fused"].channels == 2
