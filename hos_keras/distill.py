"""Fine-tuning a slimmed student with auxiliary reconstruction losses.

Chatzikonstantinou et al., "Neural Network Compression Using Higher-Order
Statistics and Auxiliary Reconstruction Losses", CVPRW 2020, section 3.4: after
pruning, the student is trained with the task loss plus mean squared errors
between its outputs and the unpruned teacher's, at the output (eq. 13) and at
intermediate pivots (eq. 14), the pivot terms weighted by
`gamma_k = max(0.01, (pivot_k / pivot_last) ** decay)`.

Relation to `keras.distillation.Distiller` (Keras 3.12+): that class mixes ONE
student loss and distillation losses with `student_loss_weight` in [0, 1] and
extracts features by layer name. `HOSDistiller` needs what it does not offer: the
task loss at full weight plus independently weighted terms, teacher features
gathered at the student's kept channels (so a pruned layer can be a pivot without
extra parameters), the paper's pivot placement and gamma schedule, per-term logs,
and switching the auxiliary terms off for the last fine-tuning stage. It is
therefore a sibling, not a subclass; the frozen-teacher convention is the same.

The reference code computed the teacher's targets once, on differently augmented
images, and its intermediate targets stayed zero through a comparison bug; here
the teacher runs in inference mode on the same batch at every step.

Files cited as "the reference" are in the authors' repository
chatzikon/DNN-COMPRESSION, under `cifar/step3/`.
"""

from __future__ import annotations

import copy
import difflib
import itertools

import keras
import numpy as np
import tensorflow as tf
from keras.src.ops import numpy as numpy_ops

from hos_keras import graph, layer_rules
from hos_keras.blocks import transformer_blocks
from hos_keras.errors import InvalidArgumentError, PlanMismatchError
from hos_keras.plan_record import PruningPlan
from hos_keras.training import check_inputs, check_labels

__all__ = ["HOSDistiller", "auto_pivots", "fit_distributed", "pivot_weights"]

_OUTPUT_LOSSES = ("softmax_mse", "logits_mse")

# A residual merge: the Add layer (and its subclasses) or keras.ops.add / `a + b`
# on two tensors of the same shape.
_ADDITIONS = (keras.layers.Add, numpy_ops.Add)

# Layers that act on each channel alone and end a block or stage when they follow
# its last operation directly (ReLU after the residual Add, BN and ReLU after a
# strided conv). Noise layers such as Dropout are left out: a pivot after them
# would compare random masks.
_POINTWISE = (
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Activation,
)

# The positions the reference hard-codes for its CIFAR ResNets with one or two
# losses (net_for_multiloss_ft.py, lines 60-70), by (blocks, losses): ResNet-56
# has 27 blocks, ResNet-110 54, both in three stages of equal length.
_REFERENCE_POSITIONS = {
    (27, 1): [18],
    (27, 2): [9, 18],
    (54, 1): [18],
    (54, 2): [18, 36],
}


def _spatial_size(tensor) -> int | None:
    """Number of positions per channel of a feature map, or None if unknown."""
    shape = tuple(tensor.shape)
    if len(shape) < 3:
        return None
    first = keras.config.image_data_format() == "channels_first"
    dims = shape[2:] if first else shape[1:-1]
    if any(d is None for d in dims):
        return None
    return int(np.prod(dims))


def _is_pointwise(node) -> bool:
    """Whether a call acts on each channel alone (an activation or BN)."""
    op = node.operation
    if isinstance(op, _POINTWISE):
        return True
    # keras.ops.relu and the other keras.ops.nn activations on one tensor.
    return (
        isinstance(layer_rules.get_rule(op), layer_rules.ElementwiseOp)
        and type(op).__module__ == "keras.src.ops.nn"
        and len(node.input_tensors) == 1
    )


def _is_residual_merge(node) -> bool:
    tensors = node.input_tensors
    return (
        isinstance(node.operation, _ADDITIONS)
        and len(tensors) >= 2
        and len({tuple(t.shape) for t in tensors}) == 1
    )


def _is_downsampling(node) -> bool:
    tensors, outputs = node.input_tensors, node.output_tensors
    if len(tensors) != 1 or len(outputs) != 1:
        return False
    if len(tensors[0].shape) != len(outputs[0].shape):
        return False
    before, after = _spatial_size(tensors[0]), _spatial_size(outputs[0])
    return before is not None and after is not None and after < before


def _candidates(model: keras.Model) -> tuple[list, bool]:
    """The output nodes of the residual blocks (or downsampling stages), in order.

    Returns:
        `(nodes, residual)`: `residual` is False when the model has no residual
        merge and the nodes end its downsampling stages.
    """
    nodes = graph.functional_nodes(model)
    consumers: dict[int, list] = {}
    for node in nodes:
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)

    def last_of(node):
        while True:
            after = consumers.get(id(node.output_tensors[0]), [])
            if len(after) != 1 or not _is_pointwise(after[0]):
                return node
            node = after[0]

    merges = [node for node in nodes if _is_residual_merge(node)]
    if merges:
        return [last_of(node) for node in merges], True
    return [last_of(node) for node in nodes if _is_downsampling(node)], False


def _transformer_outputs(model: keras.Model) -> list[str]:
    """Qualified names of the transformer blocks of a model whose own graph has
    no residual merge (a keras-hub task or backbone, whose blocks are nested)."""
    if _candidates(model)[1]:
        return []
    return [block.name for block in transformer_blocks(model) if block.name]


def block_outputs(model: keras.Model) -> list[str]:
    """Names of the pivot candidates of a model, in depth order.

    A residual block ends at its merge (an `Add` layer, or `keras.ops.add` /
    `a + b` on two tensors of the same shape) or at the activations and
    BatchNormalization that directly follow it. A model without residual merges
    in its own graph but with transformer blocks nested in it (a keras-hub
    backbone or task; see `hos_keras.transformer_blocks`) has one candidate per
    block, the block's output, named by its qualified name
    (`"vit_backbone/vit_encoder/transformer_block_1"`). A model with neither (a
    VGG-like chain) has one candidate per downsampling stage: each layer or
    operation that reduces the spatial size (pooling, strided convolution), again
    with the activations and BatchNormalization that directly follow it.
    Residual merges and downsampling stages are searched in the model's own
    graph only, not in nested models.

    Args:
        model: A functional or Sequential model.

    Returns:
        Layer (or operation) names, each the output of one block or stage.
    """
    return _transformer_outputs(model) or [
        node.operation.name for node in _candidates(model)[0]
    ]


def _stage_ends(nodes, residual: bool) -> list[int]:
    """1-based positions of the candidates after which the resolution drops."""
    if not residual:
        return list(range(1, len(nodes)))
    sizes = [_spatial_size(node.output_tensors[0]) for node in nodes]
    return [
        k
        for k in range(1, len(nodes))
        if sizes[k - 1] is not None and sizes[k] is not None and sizes[k] < sizes[k - 1]
    ]


def _cal_pivot(n: int, blocks: int) -> list[int]:
    """The reference's `cal_pivot`: pivot positions spread over the blocks.

    `per = blocks // (n + 1) + 1`, position i (0-based) is
    `min(per * (i + 1), blocks - 1)` (net_for_multiloss_ft.py, lines 115-133).
    """
    per = blocks // (n + 1) + 1
    return [min(per * (i + 1), blocks - 1) for i in range(n)]


def _closest(targets: list[int], ends: list[int]) -> list[int]:
    """The len(targets) ends closest to the targets, in order (least total
    distance; ties go to the earlier ends)."""
    return list(
        min(
            itertools.combinations(ends, len(targets)),
            key=lambda chosen: sum(
                abs(a - b) for a, b in zip(chosen, targets, strict=True)
            ),
        )
    )


def auto_pivots(model: keras.Model, n: int = 2, *, strict: bool = True) -> list[str]:
    """Pivot layers placed as the paper's code places them.

    The candidates are the B residual block outputs of `block_outputs`, or, in a
    model without residual merges, the outputs of its downsampling stages.
    The "stage ends" are the candidates after which the spatial resolution drops
    (every candidate but the last in a model without residual merges). Positions
    (1-based, in blocks) are chosen in this order:

    1. The positions the reference hard-codes for its CIFAR ResNets, for a model
       laid out like them (27 or 54 blocks in three equal stages) and n <= 2:
       ResNet-56 n = 1 -> [18], n = 2 -> [9, 18]; ResNet-110 n = 1 -> [18],
       n = 2 -> [18, 36] (net_for_multiloss_ft.py, lines 60-70).
    2. If n is at most the number of stage ends: the n stage ends closest to the
       reference's `cal_pivot` positions of 3. (least total distance, ties to the
       earlier end). This alone reproduces the table of 1. except for ResNet-110
       with one loss, where it would pick block 36.
    3. Otherwise the `cal_pivot` positions themselves
       (net_for_multiloss_ft.py, lines 115-133): `per = B // (n + 1) + 1`,
       position i `min(per * (i + 1), B - 1)`; ResNet-56 n = 3 -> [7, 14, 21],
       ResNet-110 n = 3 -> [14, 28, 42].

    The reference counts the 13 blocks of its MobileNet with `cal_pivot`; here a
    model without residual merges is counted in downsampling stages, or, when it
    holds transformer blocks (a keras-hub backbone or task), in those blocks,
    placed by 3. (their resolution never drops): a 12-block ViT with n = 2 gets
    blocks [5, 10], a 2-block one with n = 1 block 1. The pivots are then the
    blocks' qualified names, e.g. `"bert_backbone/transformer_layer_0"`.

    Args:
        model: The (student) model.
        n: Number of intermediate losses. Defaults to `2`.
        strict: Raise when the model has too few blocks or stages for `n`
            pivots; with `False`, return `[]` (distil with the output loss
            only, as `compress` and the tuner do). Defaults to `True`.

    Returns:
        Layer (or operation) names, in depth order.

    Raises:
        InvalidArgumentError: if n is not an integer >= 0, or (with `strict`)
            the model has too few blocks or stages for n distinct pivots.

    Example:

    ```python
    model = hos_keras.models.resnet56()
    hos_keras.auto_pivots(model, 2)  # ['stage1_block9_out', 'stage2_block9_out']
    ```
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidArgumentError(
            f"Received n={n!r} pivots; pass an integer >= 0 (the number of "
            "intermediate losses)."
        )
    if n == 0:
        return []
    names = _transformer_outputs(model)
    transformer = bool(names)
    if transformer:
        # One resolution throughout: no stage ends, the blocks are spread.
        residual, ends = True, []
    else:
        nodes, residual = _candidates(model)
        names = [node.operation.name for node in nodes]
        ends = _stage_ends(nodes, residual)
    blocks = len(names)
    positions = None
    if residual and ends == [blocks // 3, 2 * blocks // 3]:
        positions = _REFERENCE_POSITIONS.get((blocks, n))
    if positions is None and blocks > 1:
        positions = _cal_pivot(n, blocks)
        if n <= len(ends):
            positions = _closest(positions, ends)
    if positions is None or len(set(positions)) < n:
        if not strict:
            return []
        kind = "residual blocks" if residual else "downsampling stages (no residual)"
        if transformer:
            kind = "transformer blocks"
        raise InvalidArgumentError(
            f"Model {model.name!r} has {blocks} {kind}, too few for {n} "
            "distinct automatic pivots. Ask for fewer (n_pivots) or name the pivot "
            "layers: pivots=['layer_a', 'layer_b']."
        )
    return [names[k - 1] for k in positions]


def pivot_weights(positions, decay: float = 3.0, floor: float = 0.01) -> list[float]:
    """gamma_k = max(floor, (position_k / position_last) ** decay) (paper eq. 14)."""
    last = float(max(positions))
    return [max(floor, (p / last) ** decay) for p in positions]


def _named_nodes(model, prefix: str = "") -> dict[str, list]:
    """The nodes of a model by qualified name (`"outer/inner"`), nested models
    and the views of traced subclassed layers opened; not the inside of a block
    re-created from its config (`hos_keras.fixed_blocks`), whose view holds
    other shapes."""
    nodes: dict[str, list] = {}
    for node in graph.functional_nodes(model):
        if node.is_input:
            continue
        name = prefix + node.operation.name
        nodes.setdefault(name, []).append(node)
        inner = graph.inner_graph(node.operation, node)
        if inner is not None and not graph.is_fixed(node.operation):
            for inner_name, found in _named_nodes(inner, f"{name}/").items():
                nodes.setdefault(inner_name, []).extend(found)
    return nodes


def _pivot_outputs(model, names) -> list:
    """The output tensor of each named layer or keras.ops operation of a model
    (qualified names reach into nested models and traced layers)."""
    nested = any("/" in name for name in names)
    if nested:
        nodes = _named_nodes(model)
    else:
        nodes = {}
        for node in graph.functional_nodes(model):
            nodes.setdefault(node.operation.name, []).append(node)
    tensors = []
    for name in names:
        found = nodes.get(name, [])
        if not found:
            close = difflib.get_close_matches(name, list(nodes), n=3)
            hint = f" Close names: {close}." if close else ""
            raise InvalidArgumentError(
                f"Pivot {name!r} is not a layer of model {model.name!r}.{hint}"
            )
        if len(found) > 1:
            raise InvalidArgumentError(
                f"Pivot {name!r} is called {len(found)} times in model "
                f"{model.name!r}, so its output is ambiguous; pick a layer called "
                "once."
            )
        tensors.append(found[0].output_tensors[0])
    return tensors


def _model_inputs(model):
    """The model's inputs in the structure it is called with."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _features(model: keras.Model, names: list[str], tensors: list):
    """A callable `(x, training) -> [model output, *features at names]`.

    Top-level names: a functional model on the model's own tensors. Qualified
    names (a transformer block inside a keras-hub backbone): `_NestedFeatures`,
    which runs the graph itself, as no functional model can reach a tensor
    inside a nested one.
    """
    if any("/" in name for name in names):
        return _NestedFeatures(model, names)
    return keras.Model(_model_inputs(model), [model.outputs[0], *tensors])


class _NestedFeatures:
    """Runs a functional model node by node, as `Functional.call` does, opening
    the nested graphs (nested models, views of traced layers) that hold a wanted
    name, and returns `[first output, *values at the wanted names]`.

    The model's own layers are called on the values, so gradients reach its
    weights; nothing is added to its graph (no new nodes on its layers)."""

    def __init__(self, model: keras.Model, names: list[str]):
        self.model = model
        self.names = list(names)
        self.wanted = set(names)

    def _opens(self, name: str) -> bool:
        return any(wanted.startswith(f"{name}/") for wanted in self.wanted)

    def __call__(self, x, training=None) -> list:
        inputs = graph.io_structure(self.model)[0]
        given = keras.tree.flatten(x)
        expected = keras.tree.flatten(inputs)
        if isinstance(inputs, dict) and isinstance(x, dict):
            given = [x[key] for key in sorted(inputs)]
        values = {
            id(t): keras.ops.cast(v, t.dtype)
            for t, v in zip(expected, given, strict=True)
        }
        found: dict[str, object] = {}
        self._run(self.model, "", values, found, training)
        outputs = keras.tree.flatten(graph.io_structure(self.model)[1])
        return [values[id(outputs[0])], *(found[name] for name in self.names)]

    def _run(self, model, prefix: str, values: dict, found: dict, training) -> None:
        for node in graph.functional_nodes(model):
            op = node.operation
            if node.is_input or isinstance(op, keras.layers.InputLayer):
                continue
            name = prefix + op.name
            inner = graph.inner_graph(op, node) if self._opens(name) else None
            if inner is not None and not graph.is_fixed(op):
                feeds = {
                    id(inner_input): values[id(outer)]
                    for outer, inner_input in zip(
                        node.input_tensors, inner.inputs, strict=True
                    )
                }
                self._run(inner, f"{name}/", feeds, found, training)
                results = [feeds[id(t)] for t in inner.outputs]
            else:
                args, kwargs = node.arguments.fill_in(values)
                # Functional.call's rule (keras.src.models.functional's
                # operation_fn): the flag to every layer whose call takes one.
                if training is not None and "training" in getattr(
                    op, "_call_context_args", ()
                ):
                    kwargs["training"] = training
                results = keras.tree.flatten(op(*args, **kwargs))
            for tensor, value in zip(node.output_tensors, results, strict=True):
                values[id(tensor)] = value
            if name in self.wanted:
                found[name] = results[0]


def _non_negative(value) -> bool:
    try:
        return float(value) >= 0
    except (TypeError, ValueError):
        return False


class HOSDistiller(keras.Model):
    """Trains a pruned student against its unpruned teacher with auxiliary losses.

    loss = compiled task loss
         + output_weight * MSE(student output, teacher output)   (softmax or logits)
         + sum_k gamma_k * MSE(student features at pivot k, teacher's there),
    gamma_k = max(0.01, (block_k / block_last) ** decay). The teacher runs in
    inference mode on the same batch; its weights never change.

    The pivot terms compare raw feature maps, as the reference does
    (main_finetune_dimen_mult_loss.py, `auxnet_forward`: `F.mse_loss` between a
    segment's output and the teacher's). With a plan, the teacher's maps are
    gathered at the student's kept channels, so a pivot may sit where channels were
    pruned; the reference's pivots are block outputs, whose shapes its pruning
    never changes. Without a plan, a pivot whose shapes differ gets a head of
    hos_keras's own: global average pooling and a trainable Dense layer to the
    teacher's channel count on the student side, global average pooling on the
    teacher side, and the MSE between the two pooled vectors. The reference's
    auxiliary heads are something else: `AuxClassifier` (net_for_multiloss_ft.py,
    lines 23-42: spatial mean, then a Linear layer to the number of classes)
    outputs class scores that only serve its per-segment accuracy logs and a
    test-time cross-entropy; they take no part in the training loss.

    Args:
        student: The slimmed model to train (e.g. `slim_model(teacher, plan)`).
        teacher: The unpruned model. It is frozen inside the distiller (never
            updated, run in inference mode); its own `trainable` flags are left
            as they are.
        plan: The `PruningPlan` that made the student from the teacher: the
            teacher's pivot features are then gathered at the kept channels. With
            `None`, pivots whose shapes differ get a trainable head (global
            average pooling + Dense to the teacher's width; see above). Defaults
            to `None`.
        pivots: `"auto"` (at the residual stage ends or spread over the blocks
            as the reference does, or at the downsampling stages of a model
            without residual blocks; see `auto_pivots`), a list of layer or
            keras.ops operation names present in both models, or `None` for no
            intermediate losses. Defaults to `"auto"`.
        n_pivots: Number of automatic pivots. Defaults to `2`.
        output_loss: `"softmax_mse"` (the paper's text) or `"logits_mse"` (the
            reference code). Defaults to `"softmax_mse"`.
        output_weight: Weight of the output term, >= 0, or `None` for the
            reference's `mse_factor`: 5 when there are pivot terms
            (main_finetune_dimen_mult_loss.py, `__main__`), 1 without
            (main_finetune_dimen_loss.py, `__main__`). The reference weighs a
            logits MSE; with `"softmax_mse"` the term is smaller for the same
            weight. Defaults to `None`.
        decay: Exponent of the pivot weights. Defaults to `3.0`.
        auxiliary: Whether the output and pivot terms are used; switch off with
            `set_auxiliary(False)` for the last fine-tuning stage. Defaults to
            `True`.

    Raises:
        InvalidArgumentError: for mismatched input/output shapes, unknown pivots
            (close names are listed) or pivots called more than once, too few
            blocks for `n_pivots`, a negative output weight or an unknown output
            loss.
        PlanMismatchError: if the plan does not map the teacher to the student.

    Example:

    ```python
    plan = hos_keras.plan_pruning(teacher, allocation="target", macs_reduction=0.5)
    student = hos_keras.slim_model(teacher, plan)
    distiller = hos_keras.HOSDistiller(student, teacher, plan=plan)
    distiller.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(train, epochs=10)
    distiller.set_auxiliary(False)
    distiller.fit(train, epochs=2)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        plan: PruningPlan | None = None,
        pivots="auto",
        n_pivots: int = 2,
        output_loss: str = "softmax_mse",
        output_weight: float | None = None,
        decay: float = 3.0,
        auxiliary: bool = True,
        name: str = "hos_distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if tuple(student.input_shape) != tuple(teacher.input_shape):
            raise InvalidArgumentError(
                f"Student input shape {student.input_shape} differs from the "
                f"teacher's {teacher.input_shape}; both must read the same data."
            )
        if tuple(student.output_shape) != tuple(teacher.output_shape):
            raise InvalidArgumentError(
                f"Student output shape {student.output_shape} differs from the "
                f"teacher's {teacher.output_shape}; the output term compares them."
            )
        if output_loss not in _OUTPUT_LOSSES:
            raise InvalidArgumentError(
                f"Received output_loss={output_loss!r}; pass one of "
                f"{list(_OUTPUT_LOSSES)}."
            )
        if output_weight is not None and not _non_negative(output_weight):
            raise InvalidArgumentError(
                f"Received output_weight={output_weight!r}; pass a number >= 0, "
                "or None for the reference's weight (5 with pivots, 1 without)."
            )
        if pivots == "auto":
            pivots = auto_pivots(student, n_pivots)
        pivots = list(pivots or [])
        if output_weight is None:
            # The reference's `mse_factor`: 5 with its intermediate losses
            # (main_finetune_dimen_mult_loss.py), 1 without (..._dimen_loss.py).
            output_weight = 5.0 if pivots else 1.0
        s_pivots = _pivot_outputs(student, pivots)
        t_pivots = _pivot_outputs(teacher, pivots)
        blocks = block_outputs(student)
        positions = [
            blocks.index(p) + 1 if p in blocks else i + 1 for i, p in enumerate(pivots)
        ]
        self.student = student
        self.teacher = teacher
        # Plain attribute (no Keras tracking): ids of the variables never trained.
        self.__dict__["_teacher_ids"] = frozenset(id(v) for v in teacher.variables)
        self.pivots = pivots
        self.gammas = pivot_weights(positions, decay) if pivots else []
        self.output_loss = output_loss
        self.output_weight = float(output_weight)
        self.decay = float(decay)
        self.auxiliary = bool(auxiliary)
        self._plan = plan
        self.aux_heads: list[keras.Model] = []
        self._gathers = self._teacher_gathers(plan, s_pivots, t_pivots)
        self._student_features = _features(student, pivots, s_pivots)
        self._teacher_features = _features(teacher, pivots, t_pivots)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_tracker = keras.metrics.Mean(name="task_loss")
        self.output_tracker = keras.metrics.Mean(name="output_mse")
        self.pivot_trackers = [keras.metrics.Mean(name=f"mse_{p}") for p in pivots]
        # Every variable exists now (student, teacher, heads): weights can be saved
        # and loaded before the first call (e.g. by KerasTuner's checkpoints).
        self.built = True

    def _teacher_gathers(self, plan, s_pivots, t_pivots):
        """For each pivot, the teacher channels matching the student's (or the
        student-side head, without a plan), or None where the shapes match."""
        gathers = []
        if plan is None:
            for p, s_tensor, t_tensor in zip(
                self.pivots, s_pivots, t_pivots, strict=True
            ):
                s_shape, t_shape = s_tensor.shape, t_tensor.shape
                if tuple(s_shape) == tuple(t_shape):
                    gathers.append(None)
                    continue
                # hos_keras's own head (not the reference's AuxClassifier): global
                # average pooling and a Dense layer to the teacher's width on the
                # student side, global average pooling on the teacher side.
                head = keras.Sequential(
                    [keras.Input(tuple(s_shape[1:]))]
                    + (
                        [keras.layers.GlobalAveragePooling2D()]
                        if len(s_shape) == 4
                        else []
                    )
                    + [keras.layers.Dense(int(t_shape[-1]))],
                    name=f"aux_head_{p}",
                )
                self.aux_heads.append(head)
                gathers.append(head)
            return gathers
        channel_graph = graph.channel_groups(self.teacher, warn=False)
        removed = channel_graph.removed_classes(
            {
                g.name: g.keep
                for g in plan.groups.values()
                if g.name in channel_graph.classes
            }
        )
        for p, s_tensor in zip(self.pivots, s_pivots, strict=True):
            classes = channel_graph.tensors.get(p)
            s_channels = int(s_tensor.shape[-1])
            if classes is None:
                keep = None
            else:
                keep = np.flatnonzero(~np.isin(classes, removed))
            if keep is None or len(keep) != s_channels:
                raise PlanMismatchError(
                    f"The plan does not map teacher pivot {p!r} onto the student's "
                    f"{s_channels} channels; pass the plan that made this student."
                )
            gathers.append(None if len(keep) == len(classes) else keep)
        return gathers

    def get_config(self) -> dict:
        """Architecture and settings (weights travel with the models' own files),
        on top of `keras.Model`'s own (name, trainable, dtype)."""
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "plan": None if self._plan is None else self._plan.to_json(),
            "pivots": list(self.pivots),
            "output_loss": self.output_loss,
            "output_weight": self.output_weight,
            "decay": self.decay,
            "auxiliary": self.auxiliary,
        }

    @classmethod
    def from_config(cls, config: dict) -> HOSDistiller:
        config = copy.deepcopy(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        if config.get("plan") is not None:
            config["plan"] = PruningPlan.from_json(config["plan"])
        return cls(**config)

    def set_auxiliary(self, enabled: bool) -> None:
        """Turns the output and pivot terms on or off (recompile afterwards)."""
        self.auxiliary = bool(enabled)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    # The teacher is frozen HERE, not by setting `teacher.trainable = False`: that
    # would change the caller's model (and every model later rebuilt from its
    # config, e.g. `slim_model(teacher, plan)`, would come out untrainable).
    def _is_teacher(self, variable) -> bool:
        return id(variable) in self.__dict__.get("_teacher_ids", ())

    @property
    def trainable_variables(self):
        return [v for v in super().trainable_variables if not self._is_teacher(v)]

    @property
    def trainable_weights(self):
        return [v for v in super().trainable_weights if not self._is_teacher(v)]

    @property
    def non_trainable_variables(self):
        extra = [v for v in super().trainable_variables if self._is_teacher(v)]
        return super().non_trainable_variables + extra

    @property
    def non_trainable_weights(self):
        extra = [v for v in super().trainable_weights if self._is_teacher(v)]
        return super().non_trainable_weights + extra

    @property
    def metrics(self):
        trackers = [self.loss_tracker, self.task_tracker]
        if self.auxiliary:
            trackers += [self.output_tracker, *self.pivot_trackers]
        if self._compile_metrics is not None:
            trackers.append(self._compile_metrics)
        return trackers

    def _terms(self, x, y, sample_weight, training):
        """All loss terms as global-batch means, whatever the number of replicas.

        Keras scales compiled losses by 1 / replicas under tf.distribute (gradients
        are summed across replicas); the terms here are unscaled for logging and
        the caller divides the total by the replica count for the gradient.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # A feature model with one output returns a tensor, not a list.
        student_out = keras.tree.flatten(self._student_features(x, training=training))
        s_pred, s_feats = student_out[0], student_out[1:]
        if self._compile_loss is None:
            raise InvalidArgumentError(
                "HOSDistiller was compiled without a task loss (loss=None); pass "
                "compile(loss=...), and loss_weights=0.0 to train on the auxiliary "
                "losses alone."
            )
        task = tf.cast(self._compile_loss(y, s_pred, sample_weight), tf.float32)
        task = task * float(replicas)
        if self.student.losses:
            task += tf.add_n([tf.cast(v, tf.float32) for v in self.student.losses])
        terms = {"task_loss": task}
        total = task
        if self.auxiliary:
            teacher_out = keras.tree.flatten(self._teacher_features(x, training=False))
            t_pred = tf.stop_gradient(tf.cast(teacher_out[0], tf.float32))
            s_pred32 = tf.cast(s_pred, tf.float32)
            if self.output_loss == "softmax_mse":
                s_pred32, t_pred = tf.nn.softmax(s_pred32), tf.nn.softmax(t_pred)
            terms["output_mse"] = tf.reduce_mean(tf.square(s_pred32 - t_pred))
            total += self.output_weight * terms["output_mse"]
            for pivot, gamma, s_feat, t_feat, gather in zip(
                self.pivots,
                self.gammas,
                s_feats,
                teacher_out[1:],
                self._gathers,
                strict=True,
            ):
                t_feat = tf.stop_gradient(tf.cast(t_feat, tf.float32))
                if isinstance(gather, keras.Model):
                    s_feat = gather(s_feat, training=training)
                    if len(t_feat.shape) == 4:
                        t_feat = tf.reduce_mean(t_feat, axis=[1, 2])
                elif gather is not None:
                    t_feat = tf.gather(t_feat, gather, axis=-1)
                diff = tf.cast(s_feat, tf.float32) - t_feat
                terms[f"mse_{pivot}"] = tf.reduce_mean(tf.square(diff))
                total += gamma * terms[f"mse_{pivot}"]
        return total, terms, s_pred

    def _update(self, total, terms, y, s_pred, sample_weight):
        self.loss_tracker.update_state(total)
        self.task_tracker.update_state(terms["task_loss"])
        if self.auxiliary:
            self.output_tracker.update_state(terms["output_mse"])
            for pivot, tracker in zip(self.pivots, self.pivot_trackers, strict=True):
                tracker.update_state(terms[f"mse_{pivot}"])
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y, s_pred, sample_weight)
        logs = {}
        for metric in self.metrics:
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """Keras `fit`, after checking `x` and `validation_data` against the
        student's inputs (`hos_keras.training.check_inputs`)."""
        data = x if y is None else (x, y)
        check_inputs(self.student, data, "x")
        check_inputs(self.student, validation_data, "validation_data")
        task_loss = getattr(self, "loss", None)
        if task_loss is not None:
            check_labels(self.student, data, task_loss, "x")
            check_labels(self.student, validation_data, task_loss, "validation_data")
        if isinstance(x, tf.data.Dataset | keras.utils.PyDataset):
            kwargs.setdefault("shuffle", False)  # Keras ignores it, with a warning
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # The student's and the auxiliary heads' variables (the teacher is frozen):
        # the same set Keras builds the optimizer with.
        variables = self.trainable_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            total, terms, s_pred = self._terms(x, y, sample_weight, training=True)
            scaled = self.optimizer.scale_loss(total / float(replicas))
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        return self._update(total, terms, y, s_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        total, terms, s_pred = self._terms(x, y, sample_weight, training=False)
        return self._update(total, terms, y, s_pred, sample_weight)


def fit_distributed(
    distiller: HOSDistiller, dataset: tf.data.Dataset, epochs: int = 1
) -> dict[str, list[float]]:
    """Trains a distiller with a plain `tf.distribute` loop (multi-worker safe).

    Keras 3's `Model.fit` fails under `tf.distribute.MultiWorkerMirroredStrategy`
    (keras-team/keras issue 20585: its symbolic build reduces the first batch of
    per-replica values); this loop runs `distiller.train_step` with
    `strategy.run` instead. Use it on several machines; `distiller.fit` works
    under `MirroredStrategy` (several GPUs on one machine). Create and compile the
    distiller inside `strategy.scope()` first.

    Args:
        distiller: A compiled `HOSDistiller` built in the strategy's scope.
        dataset: A batched `tf.data.Dataset` of `(x, y)` or `(x, y, weight)` with
            the GLOBAL batch size; the strategy splits it over the replicas.
        epochs: Number of passes over `dataset`. Defaults to `1`.

    Returns:
        `{metric name: [value per epoch]}`, each value averaged over all replicas.

    Raises:
        InvalidArgumentError: if `epochs < 1` or the distiller is not compiled.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise InvalidArgumentError(f"Received epochs={epochs!r}; pass an int >= 1.")
    if distiller.optimizer is None or distiller._compile_loss is None:
        raise InvalidArgumentError(
            "Compile the distiller (optimizer and loss) before fit_distributed."
        )
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        distiller.optimizer.build(distiller.student.trainable_variables)
        x, y, _ = keras.utils.unpack_x_y_sample_weight(next(iter(dataset)))
        distiller._compile_loss.build(y, distiller.student(x))
    distributed = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def step(batch):
        logs = strategy.run(distiller.train_step, args=(batch,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

    history: dict[str, list[float]] = {}
    for _ in range(epochs):
        for metric in distiller.metrics:
            metric.reset_state()
        logs = {}
        for batch in distributed:
            logs = step(batch)
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
    return history
