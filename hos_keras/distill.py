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
"""

from __future__ import annotations

import copy
import difflib

import keras
import numpy as np
import tensorflow as tf

from hos_keras import graph
from hos_keras.errors import InvalidArgumentError, PlanMismatchError
from hos_keras.plan import PruningPlan

__all__ = ["HOSDistiller", "auto_pivots", "fit_distributed", "pivot_weights"]

_OUTPUT_LOSSES = ("softmax_mse", "logits_mse")


def block_outputs(model: keras.Model) -> list[str]:
    """Names of the residual block outputs: each Add, or the activation after it."""
    names = []
    consumers: dict[int, list] = {}
    for node in graph.functional_nodes(model):
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node.operation)
    for node in graph.functional_nodes(model):
        if isinstance(node.operation, keras.layers.Add):
            after = consumers.get(id(node.output_tensors[0]), [])
            if len(after) == 1 and isinstance(
                after[0], (keras.layers.ReLU, keras.layers.Activation)
            ):
                names.append(after[0].name)
            else:
                names.append(node.operation.name)
    return names


def auto_pivots(model: keras.Model, n: int = 2) -> list[str]:
    """Pivot layers spread over the residual blocks, as in the paper.

    With B blocks and n losses, pivot i (1-based block number) is
    `min(B // (n + 1) * (i + 1), B - 1)`: for ResNet-56 (27 blocks) and two losses,
    blocks 9 and 18, the ends of the first two stages.

    Args:
        model: The (student) model.
        n: Number of intermediate losses. Defaults to `2`.

    Returns:
        Layer names, in depth order.

    Raises:
        InvalidArgumentError: if the model has fewer than n + 1 residual blocks.
    """
    blocks = block_outputs(model)
    if len(blocks) < n + 1:
        raise InvalidArgumentError(
            f"pivots='auto' needs at least {n + 1} residual blocks (Add layers); "
            f"model {model.name!r} has {len(blocks)}. Name the pivot layers "
            "instead: pivots=['layer_a', 'layer_b']."
        )
    per = len(blocks) // (n + 1)
    numbers = [min(per * (i + 1), len(blocks) - 1) for i in range(n)]
    return [blocks[k - 1] for k in numbers]


def pivot_weights(positions, decay: float = 3.0, floor: float = 0.01) -> list[float]:
    """gamma_k = max(floor, (position_k / position_last) ** decay) (paper eq. 14)."""
    last = float(max(positions))
    return [max(floor, (p / last) ** decay) for p in positions]


def _check_names(model, names, what):
    known = [layer.name for layer in model.layers]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Close names: {close}." if close else ""
            raise InvalidArgumentError(
                f"{what} {name!r} is not a layer of model {model.name!r}.{hint}"
            )


def _model_inputs(model):
    """The model's inputs in the structure it is called with."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


class HOSDistiller(keras.Model):
    """Trains a pruned student against its unpruned teacher with auxiliary losses.

    loss = compiled task loss
         + output_weight * MSE(student output, teacher output)   (softmax or logits)
         + sum_k gamma_k * MSE(student features at pivot k, teacher's there),
    gamma_k = max(0.01, (block_k / block_last) ** decay). The teacher runs in
    inference mode on the same batch; its weights never change. With a plan, the
    teacher's pivot features are gathered at the student's kept channels.

    Args:
        student: The slimmed model to train (e.g. `slim_model(teacher, plan)`).
        teacher: The unpruned model. It is frozen inside the distiller (never
            updated, run in inference mode); its own `trainable` flags are left
            as they are.
        plan: The `PruningPlan` that made the student from the teacher: the
            teacher's pivot features are then gathered at the kept channels. With
            `None`, pivots whose shapes differ get a small trainable auxiliary head
            (global average pooling + Dense to the teacher's width), as in the
            paper's code. Defaults to `None`.
        pivots: `"auto"` (spread over the residual blocks, see `auto_pivots`), a
            list of layer names present in both models, or `None` for no
            intermediate losses. Defaults to `"auto"`.
        n_pivots: Number of automatic pivots. Defaults to `2`.
        output_loss: `"softmax_mse"` (the paper's text) or `"logits_mse"` (the
            reference code). Defaults to `"softmax_mse"`.
        output_weight: Weight of the output term, >= 0. Defaults to `1.0`.
        decay: Exponent of the pivot weights. Defaults to `3.0`.
        auxiliary: Whether the output and pivot terms are used; switch off with
            `set_auxiliary(False)` for the last fine-tuning stage. Defaults to
            `True`.

    Raises:
        InvalidArgumentError: for mismatched input/output shapes, unknown pivots
            (close names are listed), a negative output weight or an unknown
            output loss.
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
        output_weight: float = 1.0,
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
        if not float(output_weight) >= 0:
            raise InvalidArgumentError(
                f"Received output_weight={output_weight!r}; pass a number >= 0."
            )
        if pivots == "auto":
            pivots = auto_pivots(student, n_pivots)
        pivots = list(pivots or [])
        _check_names(student, pivots, "Pivot")
        _check_names(teacher, pivots, "Pivot")
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
        self._gathers = self._teacher_gathers(plan)
        self._student_features = keras.Model(
            _model_inputs(student),
            [student.outputs[0]] + [student.get_layer(p).output for p in pivots],
        )
        self._teacher_features = keras.Model(
            _model_inputs(teacher),
            [teacher.outputs[0]] + [teacher.get_layer(p).output for p in pivots],
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_tracker = keras.metrics.Mean(name="task_loss")
        self.output_tracker = keras.metrics.Mean(name="output_mse")
        self.pivot_trackers = [keras.metrics.Mean(name=f"mse_{p}") for p in pivots]
        # Every variable exists now (student, teacher, heads): weights can be saved
        # and loaded before the first call (e.g. by KerasTuner's checkpoints).
        self.built = True

    def _teacher_gathers(self, plan):
        """For each pivot, the teacher channels matching the student's, or None."""
        gathers = []
        if plan is None:
            for p in self.pivots:
                s_shape = self.student.get_layer(p).output.shape
                t_shape = self.teacher.get_layer(p).output.shape
                if tuple(s_shape) == tuple(t_shape):
                    gathers.append(None)
                    continue
                # As the paper's code: an auxiliary head (global average pooling
                # and a Dense layer to the teacher's width) on the student side,
                # global average pooling on the teacher side.
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
        for p in self.pivots:
            classes = channel_graph.tensors.get(p)
            s_channels = int(self.student.get_layer(p).output.shape[-1])
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
        """Architecture and settings (weights travel with the models' own files)."""
        return {
            "name": self.name,
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
