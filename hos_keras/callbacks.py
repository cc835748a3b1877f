"""HOSPruneCallback: HOS pruning inside a user's own `model.fit`.

At the end of each listed epoch the callback scores the current weights, lets the
allocation decide the ratios, and masks the pruned channels in place; the masks are
re-applied after every training batch (to the optimizer's moving averages too, when
it keeps them) and when training ends, so masked weights stay exactly zero whatever
the optimizer (momentum, Adam, weight decay, EMA) does. Steps after the first plan
on the slim model of the previous step, so that the zeros of masked channels never
enter a statistic or a score. After training, `callback.slim_model()` returns the
physically smaller model. The callback only orchestrates: scoring, allocation and
surgery live in their own modules.

Chatzikonstantinou et al., "Neural Network Compression Using Higher-Order
Statistics and Auxiliary Reconstruction Losses", CVPRW 2020.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from hos_keras import allocation as allocation_lib
from hos_keras import files, graph, sparsity, surgery
from hos_keras import latency as latency_lib
from hos_keras.errors import InvalidArgumentError, PlanMismatchError, directory_problem
from hos_keras.plan import plan_pruning, restrict_plan
from hos_keras.plan_record import PruningPlan
from hos_keras.recalibration import recalibrate_batchnorm
from hos_keras.sparsity import GroupSparsity
from hos_keras.specs import PruningSpec, spec_allocation
from hos_keras.text import plural
from hos_keras.training import check_inputs

__all__ = ["HOSPruneCallback"]


def _sparsity(sparse, criterion, options: dict) -> GroupSparsity | None:
    """The callback's `GroupSparsity` from its `sparse` argument."""
    if sparse is None or sparse is False:
        return None
    shared = {  # the first pruning step's, which the sparse training precedes
        k: options[k][0] if _per_step(k, options[k]) else options[k]
        for k in ("scope", "skip", "data")
        if k in options
    }
    return sparsity.from_argument(sparse, criterion=criterion, **shared)


# What a callback given `pruning=` still takes as keywords: objects, not planning
# parameters.
_BESIDE_SPECS = ("data", "calibration_loss", "latency_model")


def _from_specs(
    pruning, steps: int, criterion, allocation, options: Mapping
) -> tuple[object, object, dict]:
    """`(criterion, allocation, options)` of the callback from its `pruning`
    spec(s): one value per key, or a list of one per step where they differ."""
    specs = [pruning] if isinstance(pruning, PruningSpec) else list(pruning)
    if not specs or not all(isinstance(s, PruningSpec) for s in specs):
        raise InvalidArgumentError(
            f"Received pruning={pruning!r}; pass a hos_keras.PruningSpec or a list "
            "of one per pruning epoch."
        )
    if len(specs) not in (1, steps):
        raise InvalidArgumentError(
            f"Received {len(specs)} pruning specs for {plural(steps, 'pruning epoch')};"
            " give one spec, or one per epoch."
        )
    clashing = [k for k in options if k not in _BESIDE_SPECS]
    if criterion != "k34" or allocation != "shapiro":
        clashing = ["criterion", "allocation", *clashing]
    if clashing:
        raise InvalidArgumentError(
            f"Received pruning= with {clashing}, which the spec holds; set them in "
            "the PruningSpec (only data=, calibration_loss= and latency_model= go "
            "beside it)."
        )
    criteria = {repr(s.criterion) for s in specs}
    if len(criteria) > 1 or any(s.uniform for s in specs):
        raise InvalidArgumentError(
            f"Received pruning specs with criteria {sorted(criteria)} and uniform="
            f"{[s.uniform for s in specs]}; a callback scores every step with one "
            "criterion and does not make uniform plans. Use one criterion and "
            "uniform=False."
        )
    per_step = []
    for spec in specs:
        name, allocation_options = spec_allocation(spec)
        per_step.append(
            {
                "allocation": name,
                "min_channels": spec.min_channels,
                "round_to": spec.round_to,
                "seed": spec.seed,
                "group_reduction": spec.group_reduction,
                "scope": spec.scope,
                "skip": list(spec.skip),
                "runtime": spec.runtime,
                "verify_latency": spec.verify_latency,
                "latency_corrections": spec.latency_corrections,
                "calibration_steps": spec.calibration_steps,
                **allocation_options,
            }
        )
    names = {step["allocation"] for step in per_step}
    if len(names) > 1:
        raise InvalidArgumentError(
            f"Received pruning specs with allocations {sorted(names)}; a callback "
            "uses one allocation at every step. Vary its options instead."
        )
    merged = dict(options)
    for key in sorted({k for step in per_step for k in step} - {"allocation"}):
        values = [step.get(key) for step in per_step]
        if len(specs) == 1 or all(v == values[0] for v in values):
            merged[key] = values[0]
        elif None in values:
            raise InvalidArgumentError(
                f"Received pruning specs where only some set {key} ({values}); "
                "set it in every spec or in none."
            )
        else:
            merged[key] = values
    if merged.get("latency_reduction") is None:
        merged.pop("verify_latency")
    return specs[0].criterion, names.pop(), merged


def _writable_directory(path: str) -> str:
    """The directory of `path`, checked to exist and be writable."""
    directory, problem = directory_problem(path)
    if problem:
        raise InvalidArgumentError(f"Received plan_path={path!r}, but {problem}.")
    return directory


def _write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` whole or not at all (`hos_keras.files`)."""
    _writable_directory(path)
    files.write_text(path, text)


def _per_step(key: str, value) -> bool:
    """Whether an option holds one value per pruning step: a list or tuple, except
    `skip`, which is itself a list (one list per step is a list of lists), and the
    calibration data, an `(x, y)` pair used at every step."""
    if key in ("data", "calibration_loss") or not isinstance(value, list | tuple):
        return False
    if key == "skip":
        return bool(value) and all(isinstance(v, list | tuple) for v in value)
    return True


def _split_options(options: Mapping) -> tuple[dict, dict]:
    """`(plan_pruning's own keywords, the allocation's options)` of `options`."""
    own = {
        name
        for name, parameter in inspect.signature(plan_pruning).parameters.items()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    } - {"model", "criterion", "allocation"}
    planner = {k: v for k, v in options.items() if k in own}
    return planner, {k: v for k, v in options.items() if k not in own}


class _CumulativeAllocation(allocation_lib.Allocation):
    """Runs an allocation on the slim model of earlier steps as on the original.

    Planned on the slim model, the wrapped allocation still sees the original
    model's widths (`channels`), with the slim model's weights and scores (the
    channels removed earlier score `-inf`, below any other) and MACs and latency
    reductions relative to the original model, so per-step values keep their
    cumulative meaning (`ratio=0.5`: half of the original channels). Its ratios
    are turned into ratios of the slim widths; a group asked to keep more channels
    than earlier steps left keeps all of them.

    Args:
        allocation: The wrapped `Allocation`.
        previous: The plan the slim model was made with.
        latency_left: Latency of the slim model over the original's, for latency
            targets; else `None`.

    Attributes:
        original_ratios: After `allocate`, the ratios the wrapped allocation gave,
            of the original widths.
    """

    def __init__(
        self,
        allocation: allocation_lib.Allocation,
        previous: PruningPlan,
        latency_left: float | None = None,
    ):
        self.allocation = allocation
        self.name = allocation.name
        self.needs_data = getattr(allocation, "needs_data", False)
        self.previous = previous
        self.latency_left = latency_left
        self.original_ratios: dict[str, float] = {}

    def get_config(self) -> dict:
        return self.allocation.get_config()

    def allocate(self, context):
        previous = self.previous
        groups = previous.groups
        left = {name: len(group.keep) for name, group in groups.items()}
        if dict(context.channels) != left:
            raise PlanMismatchError(
                f"The slim model's channel groups {dict(context.channels)} differ "
                f"from the channels the previous plan kept, {left}, so the next "
                "plan cannot be mapped back to the model; prune in one step (one "
                "entry in prune_epochs)."
            )

        def slim_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
            counts = {
                name: math.floor(groups[name].channels * (1.0 - ratio) + 1e-9)
                for name, ratio in ratios.items()
            }
            return {
                name: 1.0 - min(c, left[name]) / left[name]
                for name, c in counts.items()
            }

        def scores(name: str) -> np.ndarray:
            full = np.full(groups[name].channels, -np.inf)
            full[groups[name].keep] = context.scores[name]
            return full

        macs_left = (
            previous.macs_after / previous.macs_before if previous.macs_before else 1.0
        )
        allocated = self.allocation.allocate(
            dataclasses.replace(
                context,
                channels={name: groups[name].channels for name in context.channels},
                scores={name: scores(name) for name in context.scores},
                cost=_CountedFromOriginal(
                    context.cost, slim_ratios, left, macs_left, self.latency_left
                ),
            )
        )
        self.original_ratios = dict(allocated.ratios)
        return dataclasses.replace(allocated, ratios=slim_ratios(allocated.ratios))


class _CountedFromOriginal(allocation_lib.CostModel):
    """The cost model of a later pruning step, in the original model's terms:
    ratios and counts are of the original channels, reductions of the original
    model's MACs and latency (what earlier steps removed counts too)."""

    def __init__(self, slim, slim_ratios, left, macs_left, latency_left):
        self.slim, self.slim_ratios, self.left = slim, slim_ratios, left
        self.macs_left, self.latency_left = macs_left, latency_left
        self.has_latency = slim.has_latency and latency_left is not None

    def _slim_counts(self, counts: Mapping[str, int]) -> dict[str, int]:
        return {name: min(int(c), self.left[name]) for name, c in counts.items()}

    def keep_counts(self, ratios: Mapping[str, float]) -> dict[str, int]:
        return self.slim.keep_counts(self.slim_ratios(ratios))

    def macs_reduction(self, counts: Mapping[str, int]) -> float:
        saved = self.slim.macs_reduction(self._slim_counts(counts))
        return 1.0 - (1.0 - saved) * self.macs_left

    def latency_reduction(self, counts: Mapping[str, int]) -> float:
        if not self.has_latency:
            return super().latency_reduction(counts)
        saved = self.slim.latency_reduction(self._slim_counts(counts))
        return 1.0 - (1.0 - saved) * self.latency_left


def _in_original_channels(
    slim_plan: PruningPlan, previous: PruningPlan, ratios: Mapping[str, float]
) -> PruningPlan:
    """A plan of the slim model of `previous`, in the original model's channels.

    Kept positions map through `previous`'s kept channels; the channels removed
    earlier keep the scores they were removed with; `ratios` are the ratios of the
    original widths the allocation asked for, replaced by `1 - kept / channels`
    where earlier steps had already removed more.
    """
    groups = {}
    for name, before in previous.groups.items():
        entry = slim_plan.groups[name]
        keep = before.keep[entry.keep]
        scores = before.scores.copy()
        scores[before.keep] = entry.scores
        ratio = float(ratios.get(name, 0.0))
        if len(keep) < math.floor(before.channels * (1.0 - ratio) + 1e-9):
            ratio = 1.0 - len(keep) / before.channels
        groups[name] = dataclasses.replace(
            before, keep=keep, ratio=ratio, statistic=entry.statistic, scores=scores
        )
    return dataclasses.replace(
        slim_plan,
        model_name=previous.model_name,
        groups=groups,
        frozen=dict(previous.frozen),
        params_before=previous.params_before,
        macs_before=previous.macs_before,
    )


def _moving_averages(model: keras.Model) -> dict[str, keras.Variable]:
    """The optimizer's moving average of each trainable variable, by variable path.

    Empty unless the optimizer keeps them (`use_ema=True`) and has been built.
    Keras writes them into the model when fit ends (`finalize_variable_values`),
    every `ema_overwrite_frequency` steps, and when `keras.callbacks.SwapEMAWeights`
    swaps; Keras has no public accessor, hence the private attributes.
    """
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # loss scaling
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not getattr(optimizer, "use_ema", False) or not averages:
        return {}
    return {
        variable.path: average
        for variable, average in zip(
            optimizer._trainable_variables, averages, strict=True
        )
        if average is not None
    }


class HOSPruneCallback(keras.callbacks.Callback):
    """Prunes channels at chosen epochs of `fit` by masking them to zero.

    Progressive pruning: give several epochs and, for the step sizes, a list for
    the allocation's main option (e.g. `ratio=[0.2, 0.4]` for `"fixed"` or
    `macs_reduction=[0.25, 0.5]` or `latency_reduction=[0.25, 0.5]` for
    `"target"`), one cumulative value per epoch: `ratio=0.4` means 40% of the
    original channels, `macs_reduction=0.5` half of the original MACs.
    Channels masked once stay masked: each plan also removes what earlier plans
    removed, so `callback.plan` always describes every masked channel.
    Every step after the first scores and allocates on the slim model of the
    previous step (`hos_keras.slim_model`), never on the masked one: zeroed
    channels and input rows would otherwise enter every layer statistic and
    filter score. The plan is then mapped back to the original channels; in it,
    channels removed earlier keep the scores they were removed with, and a group
    that earlier steps had already cut below its new ratio reports the ratio it
    has, `1 - kept / channels`.
    A latency target plans against a latency model on `runtime=`
    (`hos_keras.latency`, cached by architecture): of the original model at the
    first step, of the slim model after it; a plan is not re-timed unless
    `verify_latency=True`.

    Masks hold under every optimizer: they are re-applied after each batch, to
    the optimizer's moving averages too (`use_ema=True`, which Keras writes into
    the model at the end of fit and when `keras.callbacks.SwapEMAWeights` swaps),
    and again when training ends. Compile with `steps_per_execution=1`: with
    several steps per call the optimizer could move masked weights between
    re-maskings.

    Resuming: with `plan_path` set, a fit that starts after a pruning epoch (as
    with `keras.callbacks.BackupAndRestore`) reloads the plan and its masks.

    Args:
        prune_epochs: 1-based epochs (as fit prints them) at whose end to prune,
            strictly increasing.
        criterion: Filter criterion. Defaults to `"k34"`.
        allocation: Allocation name. Defaults to `"shapiro"`.
        plan_path: If set, the plan is written there (atomically) at every step.
            Defaults to `None`.
        log_dir: If set, TensorBoard summaries are written there at every step:
            scalars `hos/ratio/<group>`, `hos/statistic/<group>`,
            `hos/macs_reduction`, and histograms `hos/scores/<group>`. Defaults to
            `None`.
        verbose: Print a line per pruning step. Defaults to `1`. At each step
            fit's logs (its console line and `History`) get one value,
            `pruned_macs_reduction`; `callback.history` lists every step's
            `{"epoch", "macs_reduction", "ratios": {group: ratio}}`.
        sparse: Sparse training up to the first pruning step
            (`hos_keras.GroupSparsity`, which shrinks the channels the criterion
            ranks least important so that pruning takes away little): `True` for
            its defaults with this callback's criterion, `scope`, `skip` and
            `data`, a dict of its arguments, or a `GroupSparsity`. Defaults to
            `None` (none).
        pruning: A `PruningSpec` for every step, or one per pruning epoch
            (the same criterion in each): the criterion, allocation, target and
            planning fields in one object; the spec's `calibration_steps` applies
            when `data=` is given. With it, `criterion` and `allocation` stay
            at their defaults and `**allocation_options` holds only `data=`,
            `calibration_loss=` or `latency_model=`. Defaults to `None`.
        **allocation_options: Passed to `plan_pruning` (`scope=`, `skip=`, and
            `data=` with `calibration_steps=` for the data-driven criteria: a
            callback does not see fit's data, so give it a calibration set); a
            list value is read as one value per pruning epoch, except
            `skip=["a", "b"]`, which holds for every step (give a list of lists
            for one skip list per step), and `data=(x, y)`.

    Raises:
        InvalidArgumentError: for an empty, unsorted or non-positive
            `prune_epochs`, a per-step list of the wrong length, or a `pruning`
            spec with arguments it holds; when fit
            starts, for `prune_epochs` beyond its epochs or a model compiled with
            `steps_per_execution` other than 1.

    Example:

    ```python
    callback = hos_keras.HOSPruneCallback(
        prune_epochs=[2, 4],
        pruning=[hos_keras.PruningSpec(macs_reduction=0.25),
                 hos_keras.PruningSpec(macs_reduction=0.5)],
    )
    model.fit(train, epochs=6, callbacks=[callback])
    small = callback.slim_model()
    ```
    """

    def __init__(
        self,
        prune_epochs: Sequence[int],
        criterion="k34",
        allocation="shapiro",
        plan_path: str | None = None,
        log_dir: str | None = None,
        verbose: int = 1,
        sparse=None,
        pruning: PruningSpec | Sequence[PruningSpec] | None = None,
        **allocation_options,
    ):
        super().__init__()
        epochs = list(prune_epochs)
        if pruning is not None:
            criterion, allocation, allocation_options = _from_specs(
                pruning, len(epochs), criterion, allocation, allocation_options
            )
        if (
            not epochs
            or any(
                not isinstance(e, int) or isinstance(e, bool) or e < 1 for e in epochs
            )
            or epochs != sorted(set(epochs))
        ):
            raise InvalidArgumentError(
                f"Received prune_epochs={prune_epochs!r}; pass a non-empty, strictly "
                "increasing list of 1-based epoch numbers, e.g. [2, 4]."
            )
        for key, value in allocation_options.items():
            if _per_step(key, value) and len(value) != len(epochs):
                raise InvalidArgumentError(
                    f"Received {key}={value!r} with {len(value)} values for "
                    f"{len(epochs)} pruning epochs; give one value per epoch."
                )
        if plan_path is not None:
            _writable_directory(plan_path)
        self.prune_epochs = epochs
        self.criterion = criterion
        self.allocation = allocation
        self.allocation_options = allocation_options
        self.plan_path = plan_path
        self.log_dir = log_dir
        self._writer = None
        self.verbose = verbose
        self.plan: PruningPlan | None = None
        self._masks: dict[str, list[np.ndarray]] = {}
        self.history: list[dict] = []
        self.sparse = _sparsity(sparse, criterion, allocation_options)
        self._sparse_now = False

    def set_model(self, model):
        super().set_model(model)
        if self.sparse is not None:
            self.sparse.set_model(model)

    def on_train_begin(self, logs=None):
        planned = getattr(self.params, "get", lambda *_: None)("epochs")
        if planned is not None and self.prune_epochs[-1] > planned:
            raise InvalidArgumentError(
                f"prune_epochs={self.prune_epochs} goes beyond the "
                f"{plural(planned, 'epoch')} "
                "of this fit; prune earlier or train longer."
            )
        check_inputs(self.model, self.allocation_options.get("data"), "data")
        steps = getattr(self.model, "steps_per_execution", 1)
        if steps != 1:
            raise InvalidArgumentError(
                f"Received steps_per_execution={steps!r} (model.compile): "
                "HOSPruneCallback re-applies its masks after every batch, and with "
                "several steps per execution the optimizer moves masked weights "
                "between them. Compile with steps_per_execution=1."
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._sparse_now = self.sparse is not None and epoch < self.prune_epochs[0]
        if self._sparse_now:
            self.sparse.on_epoch_begin(epoch, logs)
        # A fit that starts after a pruning epoch is a resumed one (e.g. through
        # keras.callbacks.BackupAndRestore): recover the masks from plan_path.
        if (
            self.plan is None
            and self.plan_path
            and os.path.exists(self.plan_path)
            and any(e <= epoch for e in self.prune_epochs)
        ):
            with open(self.plan_path, encoding="utf-8") as stream:
                self.plan = PruningPlan.from_json(stream.read())
            self._masks = surgery.weight_masks(self.model, self.plan)
            self._apply_masks()

    def _options_for(self, step: int) -> dict:
        return {
            key: value[step] if _per_step(key, value) else value
            for key, value in self.allocation_options.items()
        }

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 not in self.prune_epochs:
            return
        step = self.prune_epochs.index(epoch + 1)
        options = self._options_for(step)
        if "latency_reduction" in options:
            options.setdefault("verify_latency", False)
        if self.plan is None:
            plan = plan_pruning(
                self.model,
                criterion=self.criterion,
                allocation=self.allocation,
                **options,
            )
        else:
            plan = self._plan_on_slim_model(options)
        self._masks = surgery.weight_masks(self.model, plan)
        self._apply_masks()
        self.plan = plan
        if self.plan_path:
            _write_atomically(self.plan_path, plan.to_json())
        if self.log_dir:
            self._summarize(plan, epoch + 1)
        # One short value for fit's console line and History; the per-group
        # ratios go to `history` and TensorBoard.
        if logs is not None:
            logs["pruned_macs_reduction"] = plan.macs_reduction
        self.history.append(
            {
                "epoch": epoch + 1,
                "macs_reduction": plan.macs_reduction,
                "ratios": {g.name: g.ratio for g in plan.groups.values()},
            }
        )
        if self.verbose:
            print(
                f"\nHOSPruneCallback: epoch {epoch + 1}: {plan.macs_reduction:.1%} "
                f"fewer MACs ({plan.macs_before:,} -> {plan.macs_after:,})"
            )

    def _plan_on_slim_model(self, options: dict) -> PruningPlan:
        """The plan of a later step, made on the slim model of the previous one.

        Masked channels would enter the statistics and scores as zeros (a
        consumer's zeroed input rows change every filter's moments); the slim
        model has exactly the weights that remain. The plan comes back in the
        original model's channels and keeps every channel removed before.
        """
        planner, allocation_options = _split_options(options)
        allocation = allocation_lib.get_allocation(
            self.allocation, **allocation_options
        )
        verify = planner.pop("verify_latency", False)
        slim = surgery.slim_model(self.model, self.plan)
        original = latency_left = None
        # A latency model prices one architecture: the slim model needs its own.
        given = planner.pop("latency_model", None)
        if getattr(allocation, "latency_reduction", None) is not None:
            original = given
            if original is None:
                original = latency_lib.build_latency_model(
                    self.model, planner.get("runtime", "tflite")
                )
            planner["latency_model"] = latency_lib.build_latency_model(
                slim,
                original.runtime,
                threads=original.threads,
                batch_size=original.batch_size,
            )
            latency_left = planner["latency_model"].base_ms / original.base_ms
        cumulative = _CumulativeAllocation(allocation, self.plan, latency_left)
        slim_plan = plan_pruning(
            slim,
            criterion=self.criterion,
            allocation=cumulative,
            verify_latency=False,
            **planner,
        )
        plan = _in_original_channels(slim_plan, self.plan, cumulative.original_ratios)
        # Costs counted on the original model; masked channels stay pruned.
        plan = restrict_plan(self.model, plan, self.plan)
        if original is not None:
            info = plan.details["latency"]
            info["original_ms"] = original.base_ms
            info["predicted_speedup"] = original.base_ms / max(
                info["predicted_ms"], 1e-9
            )
            if verify:
                info.update(latency_lib.measure_plan(self.model, plan, original))
        return plan

    def _summarize(self, plan: PruningPlan, step: int) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=step):
            tf.summary.scalar("hos/macs_reduction", plan.macs_reduction)
            for group in plan.groups.values():
                tf.summary.scalar(f"hos/ratio/{group.name}", group.ratio)
                if group.statistic is not None:
                    tf.summary.scalar(f"hos/statistic/{group.name}", group.statistic)
                tf.summary.histogram(f"hos/scores/{group.name}", group.scores)
        self._writer.flush()

    def on_train_end(self, logs=None):
        # fit has just written the optimizer's moving averages (use_ema=True)
        # into the model: mask again.
        if self._masks:
            self._apply_masks()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_train_batch_end(self, batch, logs=None):
        if self._sparse_now:
            self.sparse.on_train_batch_end(batch, logs)
        if self._masks:
            self._apply_masks()

    def _apply_masks(self) -> None:
        """Zeroes the masked entries of the model and of the optimizer's moving
        averages, which Keras may write back into the model."""
        averages = _moving_averages(self.model)
        for name, masks in self._masks.items():
            layer = graph.get_layer(self.model, name)
            for variable, mask in zip(layer.weights, masks, strict=True):
                if mask.all():
                    continue
                variable.assign(variable.numpy() * mask)
                average = averages.get(variable.path)
                if average is not None:
                    average.assign(average.numpy() * mask)

    def slim_model(self, data=None, steps: int = 8) -> keras.Model:
        """The physically smaller model of the last plan, with the trained weights.

        Args:
            data: Training batches (a `tf.data.Dataset`, `PyDataset`, `(x, y)` or
                `x` arrays) on which the slim model's batch norms are
                re-estimated (`hos_keras.recalibrate_batchnorm`); useful when
                the last pruning step came late in training. Defaults to `None`
                (the moving statistics of training are kept).
            steps: Batches of `data` to use. Defaults to `8`.

        Raises:
            InvalidArgumentError: if no pruning step has run yet.
        """
        if self.plan is None:
            raise InvalidArgumentError(
                "No pruning step has run yet: train past the first of "
                f"prune_epochs={self.prune_epochs} first."
            )
        slim = surgery.slim_model(self.model, self.plan)
        if data is not None:
            recalibrate_batchnorm(slim, data, steps)
        return slim
