"""Transformers through every entry point: compress, HOSPruneCallback, hos-keras.

keras-hub tasks on tiny zoo backbones with random weights, trained for a step or
two on tiny random data. Every equivalence goes through the power-checked
`invariants.assert_equivalent`, with the mask of a plan one channel different
(`different_plan`) as the decoy.

The tests that train run their steps eagerly (`eager`): tracing a train and a
test step per stage costs more than the steps themselves. The distiller's nested
pivots are checked in graph mode on their own
(`test_distiller_measures_nested_block_pivots_in_graph_mode`).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import zoo
from invariants import assert_equivalent, different_plan, outputs, random_inputs

import hos_keras
from hos_keras import cli
from hos_keras.graph import get_layer

pytestmark = [
    # The hidden width of a transformer is frozen on purpose (plan_pruning says
    # so once per plan).
    pytest.mark.filterwarnings("ignore:hos_keras does not prune:UserWarning"),
    # tf.data's own functions stay traced under `eager`, as it says.
    pytest.mark.filterwarnings("ignore:Even though the `tf.config.experimental"),
]


@pytest.fixture
def eager():
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def _live_kernels(model, seed=0):
    """Kernels drawn from N(0, 0.3^2): with keras-hub's initialisers (std 0.02)
    the attention and MLP branches hardly move the outputs, and a plan one
    channel different would look like the right one (no power)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith("kernel") and len(variable.shape) >= 2:
            variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    return model


def _classifier(task):
    """A keras-hub classifier (3 classes) on a tiny zoo backbone, its training
    data (8 examples) and a batch of 4 other inputs to compare outputs on."""
    import keras_hub

    keras.utils.set_random_seed(0)
    family = "ViTBackbone" if task.startswith("ViT") else "BertBackbone"
    backbone = _live_kernels(zoo.hub_transformer(family))
    options = {} if family == "ViTBackbone" else {"preprocessor": None}
    model = getattr(keras_hub.models, task)(backbone, num_classes=3, **options)
    if family == "ViTBackbone":
        x, probe = random_inputs(model, batch=8), random_inputs(model, seed=1)
    else:
        x = zoo.transformer_inputs(model, batch=8)
        probe = zoo.transformer_inputs(model, seed=1)
    y = np.random.default_rng(0).integers(0, 3, 8)
    return model, (x, y), probe


def _width(layer) -> int:
    """The output channels of a group's producer: heads or units."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return layer.num_heads
    return layer.units


class _AtTrainingStart(keras.callbacks.Callback):
    """Records, when the first training stage begins, the student's outputs and
    the distiller's features (output and pivots) on `x`."""

    def __init__(self, x):
        super().__init__()
        self.x = x
        self.student = self.features = self.teacher_features = None

    def on_train_begin(self, logs=None):
        if self.student is not None:
            return
        self.student = outputs(self.model.student, self.x)
        self.features = self.model._student_features(self.x, training=False)
        self.teacher_features = self.model._teacher_features(self.x, training=False)


def _block_output(backbone, block, x):
    """The output of a block called in a keras-hub backbone's own functional
    graph, computed by a Keras functional model of that graph."""
    (node,) = [
        node
        for depth in backbone._nodes_by_depth.values()
        for node in depth
        if node.operation.name == block
    ]
    probe = keras.Model(backbone.inputs, node.output_tensors[0])
    return outputs(
        probe, {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    )[0]


@pytest.mark.usefixtures("eager")
@pytest.mark.parametrize("task", ["ViTImageClassifier", "BertTextClassifier"])
def test_compress_distills_a_transformer_classifier_at_its_blocks(task):
    model, data, probe = _classifier(task)
    start = _AtTrainingStart(probe)
    slim, report = hos_keras.compress(
        model,
        data,
        data,
        criterion="l1",
        allocation="fixed",
        ratio=0.5,
        n_pivots=1,
        distill_epochs=1,
        finetune_epochs=1,
        batch_size=4,
        callbacks=[start],
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    plan = report.plan
    blocks = hos_keras.transformer_blocks(model)
    # One pivot for two blocks: the first block's output (the reference's
    # cal_pivot), a hidden-width tensor the plan leaves whole in both models.
    assert len(blocks) == 2
    assert report.pivots == [blocks[0].name]
    hidden = model.backbone.hidden_dim
    student_pivot, teacher_pivot = start.features[1], start.teacher_features[1]
    assert student_pivot.shape[-1] == teacher_pivot.shape[-1] == hidden
    # Both stages trained, with the task loss, the output MSE and the pivot MSE.
    distilled, finetuned = report.history["distill"], report.history["finetune"]
    for key in ("loss", "task_loss", "output_mse", f"mse_{blocks[0].name}"):
        assert np.isfinite(distilled[key][0]), key
    assert distilled[f"mse_{blocks[0].name}"][0] > 0
    assert np.isfinite(finetuned["loss"][0]) and "output_mse" not in finetuned
    # The slim model's widths are the plan's: half the heads and MLP units.
    pruned = {name: len(entry.keep) for name, entry in plan.groups.items()}
    # Every head and MLP group (and BERT's pooler, a Dense layer before the head).
    assert {g for b in blocks for g in b.groups} <= set(pruned)
    for name, count in pruned.items():
        assert _width(get_layer(slim, name)) == count == plan[name].channels // 2
    cost = hos_keras.profile(slim)
    assert cost["macs"] == plan.macs_after == report.macs["slim"]
    assert cost["params"] == plan.params_after == report.params["slim"]
    assert plan.macs_after < plan.macs_before
    # Before training, the student was the masked teacher; training moved it.
    masked = outputs(hos_keras.mask_model(model, plan), probe)
    decoy = outputs(hos_keras.mask_model(model, different_plan(plan)), probe)
    assert_equivalent(masked, start.student, decoys=[decoy], name=task)
    assert not np.allclose(outputs(slim, probe)[0], start.student[0])


def test_distiller_measures_nested_block_pivots_in_graph_mode():
    model, (x, y), _ = _classifier("BertTextClassifier")
    plan = hos_keras.plan_pruning(model, "l1", "fixed", ratio=0.5)
    slim = hos_keras.slim_model(model, plan)
    distiller = hos_keras.HOSDistiller(
        slim, model, plan=plan, n_pivots=1, output_loss="logits_mse"
    )
    pivot = f"{model.backbone.name}/transformer_layer_0"
    assert distiller.pivots == [pivot]
    distiller.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logged = distiller.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    # By hand: the two backbones' block outputs through Keras's functional
    # models of them, and the logits.
    teacher = _block_output(model.backbone, "transformer_layer_0", x)
    student_backbone = slim.get_layer(model.backbone.name)
    student = _block_output(student_backbone, "transformer_layer_0", x)
    assert teacher.shape == student.shape == (8, 16, model.backbone.hidden_dim)
    np.testing.assert_allclose(
        logged[f"mse_{pivot}"], np.mean((student - teacher) ** 2), rtol=1e-4
    )
    logits = outputs(slim, x)[0] - outputs(model, x)[0]
    np.testing.assert_allclose(logged["output_mse"], np.mean(logits**2), rtol=1e-4)


def _token_batch(n=8, length=8, seed=0):
    """Next-token training data of a causal LM: `(x, y, sample_weight)`."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 100, size=(n, length + 1)).astype("int32")
    mask = np.ones_like(tokens)
    mask[n // 2 :, length - 2 :] = 0
    x = {"token_ids": tokens[:, :-1], "padding_mask": mask[:, :-1]}
    return x, tokens[:, 1:], mask[:, 1:].astype("float32")


def _gemma_lm():
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = _live_kernels(zoo.hub_transformer("GemmaBackbone"))
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


@pytest.mark.usefixtures("eager")
def test_compress_with_uniform_keeps_a_causal_lm_that_generates():
    model = _gemma_lm()
    data = _token_batch()
    slim, report = hos_keras.compress(
        model,
        data,
        data,
        criterion="l1",
        allocation="global",
        fraction=0.3,
        uniform=True,
        n_pivots=1,
        distill_epochs=1,
        finetune_epochs=0,
        batch_size=4,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    plan = report.plan
    assert plan.details["uniform"]
    assert type(slim) is type(model) and type(slim.backbone) is type(model.backbone)
    assert slim.backbone.intermediate_dim < model.backbone.intermediate_dim
    assert report.pivots == [f"{model.backbone.name}/decoder_block_0"]
    assert np.isfinite(
        report.history["distill"][f"mse_{model.backbone.name}/decoder_block_0"]
    )
    assert hos_keras.profile(slim)["macs"] == plan.macs_after < plan.macs_before
    slim.compile(sampler="greedy")
    prompt = {
        "token_ids": np.array([[3, 14, 15, 92, 0, 0, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 0, 0, 0, 0]], "int32"),
    }
    tokens = slim.generate(prompt, max_length=8, stop_token_ids=None)["token_ids"]
    assert tokens.shape == (1, 8)
    np.testing.assert_array_equal(tokens[0, :4], prompt["token_ids"][0, :4])
    assert ((tokens >= 0) & (tokens < 100)).all()


def test_compress_refuses_misnamed_inputs_and_labels_of_another_shape():
    model = _gemma_lm()
    x, y, weights = _token_batch()
    wrong = {"tokens": x["token_ids"], "padding_mask": x["padding_mask"]}
    with pytest.raises(hos_keras.errors.InvalidArgumentError, match="'tokens'"):
        hos_keras.compress(model, (wrong, y, weights), (x, y, weights), verbose=0)
    with pytest.raises(
        hos_keras.errors.InvalidArgumentError, match=r"one integer class per position"
    ):
        hos_keras.compress(model, (x, y[:, 0]), (x, y), verbose=0)
    with pytest.raises(hos_keras.errors.InvalidArgumentError, match="uniform=1"):
        hos_keras.compress(model, (x, y), (x, y), uniform=1, verbose=0)


class _MaskWatch(keras.callbacks.Callback):
    """After every batch, the largest magnitude among the weights the pruning
    callback's current plan masks (run after it in the callback list)."""

    def __init__(self, pruning):
        super().__init__()
        self.pruning = pruning
        self.largest: list[float] = []
        self._masks = (None, None)

    def on_train_batch_end(self, batch, logs=None):
        plan = self.pruning.plan
        if plan is None:
            return
        if self._masks[0] is not plan:
            self._masks = (plan, hos_keras.surgery.weight_masks(self.model, plan))
        largest = 0.0
        for name, masks in self._masks[1].items():
            for variable, mask in zip(
                get_layer(self.model, name).weights, masks, strict=True
            ):
                values = keras.ops.convert_to_numpy(variable)
                largest = max(largest, float(np.max(np.abs(values[~mask]), initial=0)))
        self.largest.append(largest)


@pytest.mark.usefixtures("eager")
def test_callback_masks_a_vit_classifier_progressively_and_slims_to_it():
    model, (x, y), probe = _classifier("ViTImageClassifier")
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pruning = hos_keras.HOSPruneCallback(
        prune_epochs=[1, 2],
        criterion="l1",
        allocation="fixed",
        ratio=[0.25, 0.5],
        verbose=0,
    )
    watch = _MaskWatch(pruning)
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=4,
        shuffle=False,  # keras-hub's Task.fit makes a dataset of the arrays
        callbacks=[pruning, watch],
        verbose=0,
    )
    assert np.isfinite(history.history["loss"]).all()
    assert [round(h["macs_reduction"], 3) > 0 for h in pruning.history] == [True] * 2
    # Masked weights stay exactly zero through the batches after each step
    # (momentum would move them otherwise).
    assert len(watch.largest) == 4 and max(watch.largest) == 0.0
    plan = pruning.plan
    for block in hos_keras.transformer_blocks(model):
        for name in block.groups:
            assert len(plan[name].keep) == plan[name].channels // 2
    slim = pruning.slim_model()
    assert hos_keras.profile(slim)["macs"] == plan.macs_after
    decoy = outputs(hos_keras.mask_model(model, different_plan(plan)), probe)
    assert_equivalent(
        outputs(model, probe), outputs(slim, probe), decoys=[decoy], name="vit"
    )


def _run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_reports_and_prunes_a_saved_vit_classifier(tmp_path, capsys):
    model, _, probe = _classifier("ViTImageClassifier")
    path = tmp_path / "vit.keras"
    model.save(path)
    status, out, err = _run(
        capsys, "report", path, "--criterion", "l1", "--allocation", "fixed",
        "--ratio", "0.5",
    )  # fmt: skip
    assert status == 0, err
    blocks = hos_keras.transformer_blocks(model)
    for name in (g for b in blocks for g in b.groups):
        assert name in out
    slim_path, plan_path = tmp_path / "slim.keras", tmp_path / "plan.json"
    status, out, err = _run(
        capsys, "prune", path, "--criterion", "l1", "--allocation", "global",
        "--fraction", "0.3", "--uniform", "--out", slim_path, "--plan", plan_path,
    )  # fmt: skip
    assert status == 0, err
    plan = hos_keras.PruningPlan.from_json(plan_path.read_text())
    assert plan.details["uniform"]
    for role in zip(*(b.groups for b in blocks), strict=True):
        assert len({len(plan[name].keep) for name in role}) == 1, role
    assert plan.macs_after < plan.macs_before
    loaded = keras.models.load_model(slim_path)
    assert hos_keras.profile(loaded)["macs"] == plan.macs_after
    decoy = outputs(hos_keras.mask_model(model, different_plan(plan)), probe)
    assert_equivalent(
        outputs(hos_keras.mask_model(model, plan), probe),
        outputs(loaded, probe),
        decoys=[decoy],
        name="vit (hos-keras prune)",
    )


def test_cli_prune_uniform_saves_a_causal_lm_in_its_class(tmp_path, capsys):
    model = _gemma_lm()
    path, slim_path = tmp_path / "lm.keras", tmp_path / "slim.keras"
    model.save(path)
    status, _, err = _run(
        capsys, "prune", path, "--criterion", "l1", "--allocation", "global",
        "--fraction", "0.3", "--uniform", "--out", slim_path,
    )  # fmt: skip
    assert status == 0, err
    loaded = keras.models.load_model(slim_path)
    assert type(loaded) is type(model)
    assert loaded.backbone.intermediate_dim < model.backbone.intermediate_dim
    # The loaded original's untouched layers that cannot give a config (its
    # final RMSNormalization) were re-created exactly: slim == mask.
    original = keras.models.load_model(path)
    plan = hos_keras.plan_pruning(original, "l1", "global", fraction=0.3)
    plan = hos_keras.uniform_plan(original, plan)
    x = zoo.transformer_inputs(original)
    decoy = outputs(hos_keras.mask_model(original, different_plan(plan)), x)
    masked = outputs(hos_keras.mask_model(original, plan), x)
    assert_equivalent(masked, outputs(loaded, x), decoys=[decoy], name="gemma cli")
