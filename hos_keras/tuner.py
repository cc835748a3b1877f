"""KerasTuner search over the pruning thresholds under a MACs budget.

The paper hand-tunes the eq. 9 coefficient per network (3.7 for ResNet-56, 3.159
for ResNet-110, ...). `HOSHyperModel` lets a KerasTuner tuner find it, together
with the criterion, the weights of the auxiliary losses and the fine-tuning
learning rate: each trial plans and slims the base model, distills the student
with the auxiliary losses, fine-tunes it without them, and reports its validation
accuracy, its MACs reduction and a combined objective that ranks every trial
within the budget above every trial over it.

Chatzikonstantinou et al., "Neural Network Compression Using Higher-Order
Statistics and Auxiliary Reconstruction Losses", CVPRW 2020, sections 3.2-3.4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import keras_tuner

from hos_keras import allocation as allocation_lib
from hos_keras import distill, graph, hub_models, sparsity
from hos_keras import latency as latency_lib
from hos_keras import training as training_lib
from hos_keras.errors import InvalidArgumentError, NothingToPruneError
from hos_keras.plan import plan_pruning
from hos_keras.plan_record import PruningPlan
from hos_keras.profile import profile
from hos_keras.recalibration import recalibrate_batchnorm
from hos_keras.specs import (
    RENAMED,
    PruningSpec,
    TrainingSpec,
    needs_data,
    warn_renamed,
)
from hos_keras.surgery import slim_model
from hos_keras.training import check_inputs, check_labels, many_models

__all__ = ["OBJECTIVE", "HOSHyperModel"]

OBJECTIVE = "hos_score"

# Which allocation knob each allocation name searches.
_KNOBS = {
    "shapiro": "coefficient",
    "jarque_bera": "coefficient",
    "k34": "coefficient",
    "global": "fraction",
    "itpruner": "beta",
}


def _space(name: str, value, *, log: bool):
    """Checks one search-space entry: a (low, high) tuple, a list, or a scalar."""
    if isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
            raise InvalidArgumentError(
                f"Received {name}={value!r}; a range is a (low, high) tuple of numbers."
            )
        low, high = float(value[0]), float(value[1])
        if not low < high or (log and low <= 0):
            raise InvalidArgumentError(
                f"Received {name}={value!r}; pass low < high"
                + (" and low > 0 (searched on a log scale)." if log else ".")
            )
        return ("range", low, high)
    if isinstance(value, list):
        if not value:
            raise InvalidArgumentError(
                f"Received {name}=[]; an empty list leaves nothing to choose from. "
                "Pass a non-empty list, a (low, high) range or one value."
            )
        return ("choice", list(value))
    return ("fixed", value)


def _training_spec(training: TrainingSpec | None, **keywords) -> TrainingSpec:
    """`training`, or the spec of the hypermodel's keywords; with a spec, the
    keywords must be at their defaults, and the searched fields too."""
    if training is None:
        return TrainingSpec(**keywords)
    if not isinstance(training, TrainingSpec):
        raise InvalidArgumentError(
            f"Received training={training!r}; pass a hos_keras.TrainingSpec or None."
        )
    defaults = TrainingSpec()
    clashing = [
        f"{k}={v!r}" for k, v in keywords.items() if TrainingSpec(**{k: v}) != defaults
    ]
    if clashing:
        raise InvalidArgumentError(
            f"Received training= with {', '.join(clashing)}, which the spec holds; "
            "set them in the TrainingSpec."
        )
    searched = [
        f"{k}={getattr(training, k)!r}"
        for k in ("output_weight", "decay", "distill_optimizer", "finetune_optimizer")
        if getattr(training, k) != getattr(defaults, k)
    ]
    if searched:
        raise InvalidArgumentError(
            f"Received training={training!r} with {', '.join(searched)}; the "
            "hypermodel searches the auxiliary weights and the learning rate: give "
            "their search spaces as output_weight=, decay= and learning_rate=."
        )
    return training


class HOSHyperModel(keras_tuner.HyperModel):
    """A KerasTuner hypermodel whose trials are HOS-compressed students.

    `build(hp)` chooses the allocation's knob (the eq. 9 coefficient c, or the
    global fraction), the criterion, the output-loss weight and pivot decay of
    the auxiliary losses and the learning rate, plans and slims the base model,
    and returns a compiled `HOSDistiller`. `fit(hp, model, ...)` first checks the
    MACs budget (with `over_budget="reject"` a trial over it is not trained),
    then distills and fine-tunes, and returns `val_accuracy`, `macs_reduction`
    and the objective `hos_score`: the validation accuracy when the student is
    within the budget, else minus the relative excess of MACs (always below any
    trial within the budget, and closer to zero the closer it came).

    Each search-space argument takes a `(low, high)` tuple (a range; coefficient,
    learning rate and output weight are searched on a log scale), a list (a
    choice), or a single value (fixed).

    Args:
        base_model: The trained functional/Sequential model to compress (not
            modified; it is the frozen teacher of every trial).
        pruning: A `PruningSpec` holding the budget (`macs_reduction` or
            `latency_reduction`) and the fixed planning fields (`runtime`,
            `min_channels`, `round_to`, `scope`, `skip`, `seed`,
            `group_reduction`, `uniform`, `calibration_steps`, and allocation
            options other than the searched knob); its criterion and
            allocation are the search's when `criterion` and `allocation` are
            not given. With it, the keywords it holds stay at their defaults.
            Defaults to `None`: the spec of the keywords.
        training: A `TrainingSpec` holding `distill_epochs`,
            `finetune_epochs`, `recalibration_steps` and the sparse training;
            the auxiliary weights and the learning rate are searched (give
            their spaces as `output_weight`, `decay`, `learning_rate`). With
            it, those keywords stay at their defaults. Defaults to `None`: the
            spec of the keywords.
        macs_reduction: Smallest fraction of MACs a student must remove, in
            (0, 1).
        latency_reduction: Or: smallest fraction of the latency on `runtime` it
            must remove, in (0, 1), judged by the latency model's prediction
            (`hos_keras.latency`, built once for the base model and cached).
            Pass exactly one of the budgets.
        runtime: Runtime of `latency_reduction`: `"tflite"` or `"tf"`.
            Defaults to `"tflite"`.
        latency_model: A ready `hos_keras.latency.LatencyModel` of the base model
            for `latency_reduction`. Defaults to `None` (built for `runtime`).
        allocation: Allocation name(s): `"shapiro"`, `"jarque_bera"`, `"k34"`
            (their knob is `coefficient`), `"global"` (knob `fraction`) or
            `"itpruner"` (knob `beta`). Defaults to `None`: the spec's
            allocation, or `"shapiro"`.
        coefficient: Search space of c. Defaults to `(1.5, 8.0)`.
        fraction: Search space of the global fraction. Defaults to `(0.1, 0.7)`.
        beta: Search space of ITPruner's temperature (`allocation="itpruner"`,
            which allocates exactly the MACs or predicted latency budget and
            needs `calibration_data`). Defaults to `(0.5, 5.0)`.
        criterion: Criterion name(s). Defaults to `None`: the spec's criterion,
            or `["k34", "abs_k34"]` without a spec.
        output_weight: Search space of the output-term weight. Defaults to
            `(1.0, 10.0)`: it holds the reference's `mse_factor`, 5 with pivot
            terms and 1 without (see `HOSDistiller`).
        decay: Pivot-weight exponent. Defaults to `(1.0, 3.0)`.
        learning_rate: Of SGD with Nesterov momentum 0.9. Defaults to
            `(1e-3, 3e-2)`.
        distill_epochs: Epochs with the auxiliary losses. Defaults to `1`.
        finetune_epochs: Epochs without them, at a tenth of the learning rate.
            Defaults to `1`. With Hyperband, which sets the total epochs, the
            last `finetune_epochs` of each trial's budget are fine-tuning.
        loss: Task loss. Defaults to sparse categorical cross-entropy on logits.
        metrics: Defaults to `["accuracy"]`.
        over_budget: `"reject"` (do not train such trials) or `"penalize"` (train
            them, score them by their excess). Defaults to `"reject"`.
        min_channels: Fewest channels any layer keeps. Defaults to `1`.
        scope: Which groups may be pruned (`"all"`, `"inner"` for the paper's
            block-inner scope, `"conv"`, or a function; see
            `hos_keras.plan_pruning`). Defaults to `"all"`.
        skip: Names or patterns of groups never pruned. Defaults to `()`.
        calibration_data: `(x, y)` arrays or a `tf.data.Dataset` for the
            data-driven criteria in `criterion` (`"taylor"`, `"dfs"`, ...; a
            hypermodel does not see the search's data). Defaults to `None`.
        calibration_steps: Batches of it to read. Defaults to `16`.
        recalibration_steps: Batches of the search's training data on which a
            trial's slim student re-estimates its batch norms before training
            (`hos_keras.recalibrate_batchnorm`); `0` to skip. Defaults to `8`.
        sparse_epochs: Epochs of sparse training of the base model before the
            search (`hos_keras.GroupSparsity`, once, on a copy, with `loss`):
            every trial plans and slims the sparse model, and the teacher stays
            `base_model`, as in `compress(sparse_epochs=...)`. Needs
            `sparse_data`. Defaults to `0` (none).
        sparse: `GroupSparsity` arguments (a dict) or instance. Defaults to
            `None`: its defaults, with the first criterion of `criterion`, and
            `scope` and `skip`.
        sparse_data: The training data of the sparse training: `(x, y)` arrays,
            a batched `tf.data.Dataset` or a `keras.utils.PyDataset`. Defaults
            to `None`.
        sparse_optimizer: Its optimizer (name, config or instance). Defaults to
            `None`: SGD(1e-2, momentum 0.9, Nesterov).
        name: The hypermodel's name. Defaults to `"hos_hypermodel"`.
        macs_budget: Deprecated: the largest number of MACs a student may have
            (a `DeprecationWarning` naming `macs_reduction`).
        target_reduction: Deprecated name of `macs_reduction`.
        target_latency: Deprecated name of `latency_reduction`.

    Raises:
        InvalidArgumentError: for an empty search space (every entry fixed),
            an empty list, a bad range, both or neither budget, an unknown
            allocation.
        NothingToPruneError: if the base model has no prunable channels.

    Example:

    ```python
    hypermodel = hos_keras.tuner.HOSHyperModel(
        model, pruning=hos_keras.PruningSpec(macs_reduction=0.5)
    )
    tuner = keras_tuner.RandomSearch(hypermodel, objective=hypermodel.objective,
                                     max_trials=10, directory="tuning",
                                     project_name="fmnist", overwrite=False)
    tuner.search(train_ds, validation_data=val_ds)
    student = hypermodel.best_student(tuner)
    student.save("student.keras")
    ```
    """

    def __init__(
        self,
        base_model: keras.Model,
        *,
        pruning: PruningSpec | None = None,
        training: TrainingSpec | None = None,
        macs_reduction: float | None = None,
        latency_reduction: float | None = None,
        runtime: str = "tflite",
        latency_model=None,
        allocation=None,
        coefficient=(1.5, 8.0),
        fraction=(0.1, 0.7),
        beta=(0.5, 5.0),
        criterion=None,
        output_weight=(1.0, 10.0),
        decay=(1.0, 3.0),
        learning_rate=(1e-3, 3e-2),
        distill_epochs: int = 1,
        finetune_epochs: int = 1,
        loss=None,
        metrics: Sequence = ("accuracy",),
        over_budget: str = "reject",
        min_channels: int = 1,
        scope="all",
        skip=(),
        calibration_data=None,
        calibration_steps: int | None = 16,
        recalibration_steps: int = 8,
        sparse_epochs: int = 0,
        sparse=None,
        sparse_data=None,
        sparse_optimizer=None,
        name: str | None = "hos_hypermodel",
        macs_budget: int | None = None,
        target_reduction: float | None = None,
        target_latency: float | None = None,
    ):
        super().__init__(name=name, tunable=True)
        if not graph.channel_groups(base_model, warn=False).prunable:
            raise NothingToPruneError(
                f"Model {base_model.name!r} has no channels that can be pruned, so "
                "there is nothing to search."
            )
        self.macs_original = profile(base_model)["macs"]
        if macs_budget is not None:
            warn_renamed(
                "macs_budget",
                "macs_reduction",
                1 - macs_budget / self.macs_original,
                "HOSHyperModel",
            )
        for old, value in (
            ("target_reduction", target_reduction),
            ("target_latency", target_latency),
        ):
            if value is not None:
                warn_renamed(old, RENAMED[old], value, "HOSHyperModel")
        if macs_reduction is None:
            macs_reduction = target_reduction
        if latency_reduction is None:
            latency_reduction = target_latency
        given = [macs_budget, macs_reduction, latency_reduction]
        if pruning is not None:
            given += [pruning.macs_reduction, pruning.latency_reduction]
        if sum(v is not None for v in given) != 1:
            raise InvalidArgumentError(
                f"Received macs_reduction={macs_reduction!r}, latency_reduction="
                f"{latency_reduction!r}, macs_budget={macs_budget!r} and pruning="
                f"{pruning!r}; pass exactly one budget: macs_reduction= or "
                "latency_reduction= (here or in the PruningSpec)."
            )
        keywords = {
            "runtime": runtime,
            "min_channels": min_channels,
            "scope": scope,
            "skip": skip,
            "calibration_steps": calibration_steps,
        }
        if pruning is None:
            pruning = PruningSpec(
                macs_reduction=macs_reduction,
                latency_reduction=latency_reduction,
                **keywords,
            )
        elif not isinstance(pruning, PruningSpec):
            raise InvalidArgumentError(
                f"Received pruning={pruning!r}; pass a hos_keras.PruningSpec or None."
            )
        else:
            clashing = [
                f"{k}={v!r}"
                for k, v in keywords.items()
                if PruningSpec(**{k: v}) != PruningSpec()
            ]
            if clashing:
                raise InvalidArgumentError(
                    f"Received pruning= with {', '.join(clashing)}, which the spec "
                    "holds; set them in the PruningSpec."
                )
            pruning = pruning.replace(
                macs_reduction=pruning.macs_reduction or macs_reduction,
                latency_reduction=pruning.latency_reduction or latency_reduction,
            )
            if criterion is None:
                criterion = pruning.criterion
            if allocation is None:
                allocation = pruning.allocation
        self.pruning = pruning
        self.training = _training_spec(
            training,
            distill_epochs=distill_epochs,
            finetune_epochs=finetune_epochs,
            recalibration_steps=recalibration_steps,
            sparse_epochs=sparse_epochs,
            sparse=sparse,
            sparse_optimizer=sparse_optimizer,
        )
        criterion = ("k34", "abs_k34") if criterion is None else criterion
        allocation = "shapiro" if allocation is None else allocation
        target_latency = pruning.latency_reduction
        self.latency_model = None
        if target_latency is not None:
            self.latency_model = latency_model or latency_lib.build_latency_model(
                base_model, pruning.runtime
            )
            # The MACs budget stays open; the latency budget decides.
            macs_budget = self.macs_original
        elif pruning.macs_reduction is not None:
            macs_budget = math.floor(self.macs_original * (1 - pruning.macs_reduction))
        if not 0 < int(macs_budget):
            raise InvalidArgumentError(
                f"Received macs_budget={macs_budget!r}; pass a positive number."
            )
        if over_budget not in ("reject", "penalize"):
            raise InvalidArgumentError(
                f"Received over_budget={over_budget!r}; pass 'reject' or 'penalize'."
            )
        allocations = allocation if isinstance(allocation, list) else [allocation]
        for name_ in allocations:
            if name_ not in _KNOBS:
                raise InvalidArgumentError(
                    f"Received allocation={name_!r}; pass one of {sorted(_KNOBS)} "
                    "(or a list of them)."
                )
        criteria = list(criterion) if isinstance(criterion, tuple) else criterion
        self.space = {
            "allocation": _space("allocation", allocation, log=False),
            "coefficient": _space("coefficient", coefficient, log=True),
            "fraction": _space("fraction", fraction, log=False),
            "beta": _space("beta", beta, log=True),
            "criterion": _space("criterion", criteria, log=False),
            "output_weight": _space("output_weight", output_weight, log=True),
            "decay": _space("decay", decay, log=False),
            "learning_rate": _space("learning_rate", learning_rate, log=True),
        }
        knobs = {_KNOBS[a] for a in allocations}
        used = {"allocation", "criterion", "output_weight", "decay", "learning_rate"}
        used |= knobs
        if all(
            self.space[k][0] == "fixed"
            or (self.space[k][0] == "choice" and len(self.space[k][1]) == 1)
            for k in used
        ):
            raise InvalidArgumentError(
                "The search space is empty: every hyperparameter has one value. Give "
                "a (low, high) range or a list of choices for at least one of "
                f"{sorted(used)}."
            )
        self.base_model = base_model
        self.pruned_from = base_model  # the model every trial plans and slims
        self.macs_budget = int(macs_budget)
        if self.latency_model is not None:
            self._budget_key = "predicted_ms"
            self._budget = self.latency_model.base_ms * (1 - float(target_latency))
        else:
            self._budget_key, self._budget = "macs", self.macs_budget
        self.distill_epochs = self.training.distill_epochs
        self.finetune_epochs = self.training.finetune_epochs
        self.loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.metrics = list(metrics)
        self.over_budget = over_budget
        self.calibration_data = calibration_data
        self.recalibration_steps = self.training.recalibration_steps
        reading = [
            f"criterion={c!r}, allocation={a!r}"
            for c in (criteria if isinstance(criteria, list) else [criteria])
            for a in allocations
            if needs_data(c, a)
        ]
        if reading and calibration_data is None:
            raise InvalidArgumentError(
                f"Received calibration_data=None with {reading}, which read feature "
                "maps: pass calibration_data=(x, y) or a tf.data.Dataset."
            )
        self.sparse_epochs = self.training.sparse_epochs
        if self.sparse_epochs:
            if sparse_data is None:
                raise InvalidArgumentError(
                    f"Received sparse_epochs={self.sparse_epochs!r} with sparse_data="
                    "None; pass the training data (x, y) or a tf.data.Dataset: a "
                    "hypermodel does not see the search's data before planning."
                )
            training_lib.check_data("sparse_data", sparse_data)
            check_inputs(base_model, sparse_data, "sparse_data")
            first = self.space["criterion"][1]
            self.pruned_from = training_lib.sparse_trained(
                base_model,
                sparse_data,
                self.sparse_epochs,
                sparsity.from_argument(
                    self.training.sparse,
                    criterion=first[0] if isinstance(first, list) else first,
                    scope=pruning.scope,
                    skip=pruning.skip,
                    data=calibration_data,
                    calibration_steps=pruning.calibration_steps,
                ),
                loss=self.loss,
                metrics=self.metrics,
                optimizer=self.training.sparse_optimizer,
            )

    @property
    def objective(self) -> keras_tuner.Objective:
        """The objective to give the tuner: `hos_score`, maximized."""
        return keras_tuner.Objective(OBJECTIVE, direction="max")

    def _value(self, hp, key: str):
        kind, *rest = self.space[key]
        if kind == "fixed":
            return hp.Fixed(key, rest[0])
        if kind == "choice":
            return hp.Choice(key, rest[0])
        low, high = rest
        log = key in ("coefficient", "output_weight", "learning_rate")
        return hp.Float(key, low, high, sampling="log" if log else "linear")

    def plan(self, hp) -> PruningPlan:
        """The pruning plan of a trial's hyperparameters."""
        allocation = self._value(hp, "allocation")
        criterion = self._value(hp, "criterion")
        knob = _KNOBS[allocation]
        with hp.conditional_scope(
            "allocation", [a for a, k in _KNOBS.items() if k == knob]
        ):
            value = self._value(hp, knob)
        spec = self.pruning
        options = dict(spec.allocation_options)
        if allocation == "itpruner":  # it allocates exactly for the budget
            target = (
                {"macs_reduction": 1.0 - self.macs_budget / self.macs_original}
                if self.latency_model is None
                else {
                    "latency_reduction": 1.0 - self._budget / self.latency_model.base_ms
                }
            )
            allocator = allocation_lib.for_target(
                allocation, **target, **options, beta=value
            )
        else:
            allocator = allocation_lib.get_allocation(
                allocation, **{**options, knob: value}
            )
        calibration = {}
        if needs_data(criterion, allocation):
            calibration = {
                "data": self.calibration_data,
                "calibration_steps": spec.calibration_steps,
            }
        plan = plan_pruning(
            self.pruned_from,
            criterion,
            allocator,
            **calibration,
            min_channels=spec.min_channels,
            round_to=spec.round_to,
            seed=spec.seed,
            group_reduction=spec.group_reduction,
            scope=spec.scope,
            skip=spec.skip,
            runtime=spec.runtime,
            latency_model=self.latency_model,
            verify_latency=False,
        )
        return hub_models.uniform_plan(self.pruned_from, plan) if spec.uniform else plan

    def build(self, hp) -> distill.HOSDistiller:
        plan = self.plan(hp)
        student = slim_model(self.pruned_from, plan)
        pivots = distill.auto_pivots(student, 2, strict=False)
        distiller = distill.HOSDistiller(
            student,
            self.base_model,
            plan=plan,
            pivots=pivots,
            output_weight=self._value(hp, "output_weight"),
            decay=self._value(hp, "decay"),
        )
        distiller.hos_plan = plan
        distiller.compile(
            optimizer=training_lib.sgd(self._value(hp, "learning_rate")),
            loss=self.loss,
            metrics=self.metrics,
        )
        # Optimizer slots exist from the start, so a trial's checkpoint (saved
        # after training) loads into a freshly built distiller without mismatch.
        distiller.optimizer.build(distiller.trainable_variables)
        return distiller

    def score(self, cost: float, accuracy: float | None) -> float:
        """The objective: accuracy within the budget, else -(relative excess).

        `cost` is the student's MACs, or its predicted latency (ms) with
        `latency_reduction`.
        """
        if cost <= self._budget:
            return float(accuracy)
        return -float(cost - self._budget) / self._budget

    def _over_budget_line(self, plan: PruningPlan, cost: float, score: float) -> str:
        """What a skipped trial prints: why, by how much, and its score."""
        if self._budget_key == "predicted_ms":
            what = (
                f"predicted {cost:.3f} ms, budget {self._budget:.3f} ms "
                f"({plan.macs_reduction:.1%} fewer MACs)"
            )
        else:
            what = (
                f"{plan.macs_reduction:.1%} fewer MACs, the budget needs "
                f"{1 - self._budget / self.macs_original:.1%}"
            )
        return (
            f"[hos_keras] trial skipped, not trained: over budget ({what}); "
            f"{OBJECTIVE} {score:.3f} ranks it below every trial within budget."
        )

    def _cost(self, plan: PruningPlan) -> float:
        if self._budget_key == "predicted_ms":
            return float(plan.details["latency"]["predicted_ms"])
        return float(plan.macs_after)

    @many_models
    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, **kwargs):
        validation_data = kwargs.get("validation_data")
        if validation_data is None:
            raise InvalidArgumentError(
                "tuner.search(...) needs validation_data=: trials are ranked by "
                "the student's validation accuracy."
            )
        x = args[0] if args else kwargs.get("x")
        y = args[1] if len(args) > 1 else kwargs.get("y")
        check_inputs(self.base_model, x if y is None else (x, y), "x")
        check_inputs(self.base_model, validation_data, "validation_data")
        check_labels(self.base_model, x if y is None else (x, y), self.loss, "x")
        check_labels(self.base_model, validation_data, self.loss, "validation_data")
        plan = model.hos_plan
        reduction = plan.macs_reduction
        result = {"macs_reduction": reduction, "macs": float(plan.macs_after)}
        cost = self._cost(plan)
        result[self._budget_key] = cost
        if cost > self._budget and self.over_budget == "reject":
            result[OBJECTIVE] = self.score(cost, None)
            if kwargs.get("verbose", 1):
                print(self._over_budget_line(plan, cost, result[OBJECTIVE]))
            return result
        total = (
            epochs if epochs is not None else self.distill_epochs + self.finetune_epochs
        )
        switch = max(total - self.finetune_epochs, 0)
        if initial_epoch == 0 and self.recalibration_steps:
            recalibrate_batchnorm(
                model.student,
                x if y is None else (x, y),
                self.recalibration_steps,
                batch_size=kwargs.get("batch_size") or 32,
            )
        learning_rate = self._value(hp, "learning_rate")
        options = {k: v for k, v in kwargs.items() if k not in ("x", "y")}
        training_lib.distill_then_finetune(
            model,
            x if y is None else (x, y),
            distill_epochs=switch,
            finetune_epochs=total - switch,
            loss=self.loss,
            metrics=self.metrics,
            distill_optimizer=model.optimizer,  # build()'s, with its slots
            finetune_optimizer=training_lib.sgd(learning_rate / 10),
            initial_epoch=initial_epoch,
            **options,
        )
        evaluation = training_lib.evaluate_model(
            model.student, validation_data, self.loss, self.metrics
        )
        accuracy = training_lib.accuracy_of(evaluation)
        if accuracy is None:
            accuracy = -evaluation["loss"]
        result.update({f"val_{k}": v for k, v in evaluation.items()})
        result[OBJECTIVE] = self.score(cost, accuracy)
        return result

    def best_student(self, tuner: keras_tuner.Tuner) -> keras.Model:
        """The trained student of the best trial, checked against the budget.

        Args:
            tuner: The tuner that ran the search with this hypermodel.

        Returns:
            The student `keras.Model` (save it with `.save("student.keras")`).

        Raises:
            InvalidArgumentError: if no trial has finished, or if no trial met
                the budget (the message gives the closest one and what to
                change).
        """
        trials = [
            t
            for t in tuner.oracle.trials.values()
            if t.status == "COMPLETED" and t.metrics.exists(OBJECTIVE)
        ]
        if not trials:
            raise InvalidArgumentError(
                "No trial has completed; run tuner.search(...) first."
            )
        best = tuner.oracle.get_best_trials(1)[0]
        if best.metrics.get_last_value(self._budget_key) > self._budget:
            closest = min(t.metrics.get_last_value(self._budget_key) for t in trials)
            if self._budget_key == "predicted_ms":
                missed = (
                    f"No trial met the latency budget of {self._budget:.3f} ms "
                    f"(predicted, {self.latency_model.runtime}); the closest was "
                    f"{closest:.3f} ms."
                )
            else:
                missed = (
                    f"No trial met the budget of {self.macs_budget:,} MACs "
                    f"({1 - self.macs_budget / self.macs_original:.1%} fewer than "
                    f"{self.macs_original:,}); the closest kept {closest:,.0f} MACs "
                    f"({1 - closest / self.macs_original:.1%} fewer)."
                )
            raise InvalidArgumentError(
                f"{missed} Lower the coefficient range (smaller c prunes more), "
                "raise the fraction range, or relax the budget."
            )
        return tuner.load_model(best).student
