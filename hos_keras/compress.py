"""`compress`: the whole HOS pipeline in one call, with a before/after report.

score -> allocate -> slim -> distill with the auxiliary reconstruction losses ->
fine-tune without them (Chatzikonstantinou et al., "Neural Network Compression
Using Higher-Order Statistics and Auxiliary Reconstruction Losses", CVPRW 2020,
sections 3.1-3.4). This module only orchestrates; each step lives in its own
module (`plan`, `surgery`, `distill`, `profile`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import keras

from hos_keras import (
    distill,
    errors,
    files,
    graph,
    resume,
    surgery,
)
from hos_keras import latency as latency_lib
from hos_keras import report as report_lib
from hos_keras import sparsity as sparsity_lib
from hos_keras import training as training_lib
from hos_keras.decompose import decompose
from hos_keras.errors import InvalidArgumentError
from hos_keras.profile import profile
from hos_keras.recalibration import batchnorm_layers, recalibrate_batchnorm
from hos_keras.report import STAGES, CompressionReport
from hos_keras.specs import RENAMED, PruningSpec, TrainingSpec, warn_renamed
from hos_keras.text import plural
from hos_keras.training import check_inputs, many_models

__all__ = ["STAGES", "CompressionReport", "compress"]

# compress's approaches, the paper's A1, A2 and A3 (docs/method.md#approaches-a1-a3).
APPROACHES = ("prune", "decompose", "prune+decompose")


@many_models
def compress(
    model: keras.Model,
    train_data,
    val_data,
    *,
    pruning: PruningSpec | None = None,
    training: TrainingSpec | None = None,
    approach: str = "prune",
    macs_reduction: float | None = None,
    latency_reduction: float | None = None,
    runtime: str = "tflite",
    latency_model: latency_lib.LatencyModel | None = None,
    decompose_method: str = "tucker2",
    decompose_factor: float = 1.71,
    decompose_ranks=None,
    decompose_layers: Sequence[str] | None = None,
    criterion="k34",
    calibration_steps: int | None = 16,
    recalibration_steps: int = 8,
    sparse_epochs: int = 0,
    sparse=None,
    sparse_optimizer=None,
    allocation="shapiro",
    scope="all",
    skip=(),
    distill_epochs: int = 1,
    finetune_epochs: int = 1,
    loss=None,
    metrics: Sequence = ("accuracy",),
    distill_optimizer=None,
    finetune_optimizer=None,
    distill_lr_schedule=None,
    finetune_lr_schedule=None,
    batch_size: int = 64,
    pivots="auto",
    n_pivots: int = 2,
    output_loss: str = "softmax_mse",
    output_weight: float | None = None,
    decay: float = 3.0,
    min_channels: int = 1,
    round_to: int | str = 1,
    uniform: bool = False,
    seed: int | None = 0,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    latency_batch_sizes: Sequence[int] = (1, 32),
    latency_runs: int = 20,
    tflite_latency: bool = True,
    output_dir: str | None = None,
    verbose: int = 1,
    target: float | None = None,
    target_latency: float | None = None,
    **allocation_options,
) -> tuple[keras.Model, CompressionReport]:
    """Prunes and/or decomposes, distills and fine-tunes a model; reports both.

    1. Compresses the model by `approach`, the paper's three
       (docs/method.md#approaches-a1-a3): `"prune"` (A1) plans the pruning on the
       model's weights (`plan_pruning`: criterion, allocation or a MACs or latency
       target) and slims it (`slim_model`); `"decompose"` (A2) replaces its convs
       by low-rank factorizations (`hos_keras.decompose`); `"prune+decompose"`
       (A3) prunes, then decomposes the slim model.
    2. Trains the slim student against the unpruned teacher with the task loss,
       the output MSE and the pivot MSEs (`HOSDistiller`, paper section 3.4) for
       `distill_epochs`.
    3. Fine-tunes it with the task loss only for `finetune_epochs`.

    The validation data is evaluated on the original, right after pruning, after
    distillation and after fine-tuning; params, MACs, inference latency (TensorFlow
    runtime, original and slim measured alternately) and `.keras` file sizes are
    measured. The input model is not modified (the teacher is a copy).

    Args:
        model: A built functional or Sequential classifier.
        train_data: `(x, y)` arrays, a batched `tf.data.Dataset` or a
            `keras.utils.PyDataset`.
        val_data: The same kinds, for the accuracies of the report.
        pruning: A `PruningSpec`: every planning argument in one object (the
            criterion, allocation, target, widths, scope, calibration). Given,
            the planning keywords below (`criterion`, `allocation`,
            `macs_reduction`, `latency_reduction`, `runtime`, `calibration_steps`,
            `scope`, `skip`, `min_channels`, `round_to`, `uniform`, `seed` and
            allocation options) must be left at their defaults. Defaults to
            `None`: the spec those keywords make.
        training: A `TrainingSpec`: every training argument in one object (the
            epochs, optimizers and schedules of both stages, the auxiliary
            losses, batch size, recalibration and sparse training). Given, the
            keywords it holds must be left at their defaults. Defaults to
            `None`: the spec those keywords make.
        approach: `"prune"`, `"decompose"` or `"prune+decompose"` (see above).
            With `"decompose"` the pruning arguments (`macs_reduction`,
            `latency_reduction`, `scope`, `skip`, allocation options) are
            refused. Defaults to `"prune"`.
        macs_reduction: Fraction of MACs to remove, in (0, 1): the coefficient
            of `allocation` is searched to reach it (see `TargetAllocation`).
            Defaults to `None` (use `allocation` with its own options).
        latency_reduction: Fraction of the latency on `runtime` to remove, in
            (0, 1) (`0.5`: 2x faster): the coefficient of `allocation` is
            searched until the predicted latency (`hos_keras.latency`) meets it,
            and the plan records the measured speed-up. Give this or
            `macs_reduction`. Defaults to `None`.
        runtime: Runtime of `latency_reduction`: `"tflite"` or `"tf"`. Defaults
            to `"tflite"`.
        latency_model: A ready latency model of `model` for `latency_reduction`
            (e.g. for another thread count). Defaults to `None` (built for
            `runtime`, or loaded from the cache).
        decompose_method: `"tucker2"` or `"fga"` (see `hos_keras.decompose`).
            Defaults to `"tucker2"`.
        decompose_factor: Compression factor of each decomposed layer. Defaults
            to `1.71`, the reference's.
        decompose_ranks: Per-layer ranks, or `"full"` (see `hos_keras.decompose`).
            Defaults to `None`.
        decompose_layers: Names of the Conv2D layers to decompose, or `None` for
            `decompose`'s default selection. Defaults to `None`.
        criterion: Filter criterion (see `score_filters`). Defaults to `"k34"`.
            The data-driven ones (`"dfs"`, `"taylor"`, `"fisher"`, ...) take
            their statistics on `train_data`, as does `allocation="itpruner"`.
        calibration_steps: Batches of `train_data` a data-driven criterion reads
            (`None`: all of them). Defaults to `16`.
        recalibration_steps: Batches of `train_data` on which the compressed
            model's batch norms are re-estimated right after compression, before
            it is evaluated or trained (`recalibrate_batchnorm`; EagleEye's
            adaptive batch normalization); `0` to skip. Defaults to `8`.
        sparse_epochs: Epochs of sparse training before planning
            (`hos_keras.GroupSparsity` on a copy of `model`, with the task loss):
            the channels the criterion ranks least important shrink first, so
            that pruning takes away little. The plan and the student come from
            the sparse model; the teacher stays `model`. Defaults to `0` (none).
        sparse: `GroupSparsity` arguments (a dict, e.g. `{"method": "bn_l1",
            "strength": 1e-2}`) or instance. Defaults to `None`: its defaults,
            with this call's criterion, scope and skip.
        sparse_optimizer: Optimizer of the sparse training (as
            `distill_optimizer`). Defaults to `None`: SGD(1e-2, momentum 0.9,
            Nesterov).
        allocation: Allocation name or instance (see `plan_pruning`). Defaults to
            `"shapiro"`.
        scope: Which channel groups may be pruned: `"all"`, `"inner"` (the
            paper's scope: no channel crossing a residual merge), `"conv"` or a
            function (see `plan_pruning`). Defaults to `"all"`.
        skip: Names or patterns of groups never pruned. Defaults to `()`.
        distill_epochs: Epochs with the auxiliary losses; `0` skips. Defaults to `1`.
        finetune_epochs: Epochs with the task loss only; `0` skips. Defaults to `1`.
        loss: Task loss. Defaults to `None`: the model's compiled loss if it has
            one, else sparse categorical cross-entropy (`from_logits` unless the
            model ends with a softmax).
        metrics: Metrics of every evaluation. Defaults to `("accuracy",)`.
        distill_optimizer: Optimizer name, config or instance (copied) for the
            distillation. Defaults to `None`: SGD(1e-3, momentum 0.9, Nesterov),
            the paper's setting.
        finetune_optimizer: The same for the fine-tuning. Defaults to `None`:
            SGD(1e-4, momentum 0.9, Nesterov).
        distill_lr_schedule: The learning rate of the distillation over time,
            replacing the optimizer's: a function of the epoch (counted from 0
            within the stage) returning the learning rate, applied at the start
            of every epoch as `keras.callbacks.LearningRateScheduler` does, so
            decay epochs hold whatever the number of steps per epoch; or a
            `keras.optimizers.schedules.LearningRateSchedule`, a function of the
            optimizer's step within the stage. The paper's MultiStepLR (x0.1 at
            epochs 80 and 120) is `lambda epoch: 1e-3 * 0.1 ** ((epoch >= 80) +
            (epoch >= 120))`. Defaults to `None` (the optimizer's own rate).
        finetune_lr_schedule: The same for the fine-tuning. Defaults to `None`.
        batch_size: Batch size when the data are arrays. Defaults to `64`.
        pivots: `"auto"`, layer names or `None` (see `HOSDistiller`). `"auto"`
            places them at residual block outputs, at the outputs of the
            transformer blocks of a keras-hub backbone or task (qualified names
            such as `"bert_backbone/transformer_layer_0"`), or at downsampling
            stages (see `auto_pivots`); on a model with too few of them there are
            no pivot losses (a message says so). Defaults to `"auto"`.
        n_pivots: Number of automatic pivots. Defaults to `2`.
        output_loss: `"softmax_mse"` or `"logits_mse"`. When the model already
            ends with a softmax the output MSE is taken on its probabilities (no
            second softmax). Defaults to `"softmax_mse"`.
        output_weight: Weight of the output MSE, or `None` for the reference's:
            5 with pivot losses, 1 without (see `HOSDistiller`). Defaults to
            `None`.
        decay: Exponent of the pivot weights. Defaults to `3.0`.
        min_channels: Fewest channels any layer keeps. Defaults to `1`.
        round_to: Kept channels rounded up to a multiple of this. Defaults to `1`.
        uniform: Pass the plan through `hos_keras.uniform_plan`: every
            transformer block of the same shape keeps the same number of heads
            and MLP units (the mean of what the plan kept, each block's own
            channels chosen by their scores). A keras-hub decoder LLM
            (`GemmaCausalLM`, `MistralCausalLM`, `QwenCausalLM`) then comes back
            in its own class, with `generate()`, instead of as a plain functional
            model. A MACs or latency target is met up to the rounding of one
            count per block role. Defaults to `False`.
        seed: Seed for randomized criteria. Defaults to `0`.
        callbacks: Extra Keras callbacks for both training stages.
        latency_batch_sizes: Batch sizes of the latency measurement. Defaults to
            `(1, 32)`; `()` skips it.
        latency_runs: Timed calls per model and batch size. Defaults to `20`.
        tflite_latency: Also time both models at batch 1 in the TFLite interpreter
            (single-input models; a conversion failure gives a warning and no
            figure). Defaults to `True`.
        output_dir: If given, `slim.keras`, `plan.json` and `report.json` are
            written there, and the run is recorded as it goes (`progress.json`,
            the student before training, a checkpoint after every epoch; see
            `hos_keras.resume`): called again with the same model and arguments
            after an interruption, compress reloads the plan, skips what is done
            and goes on from the last finished epoch. Defaults to `None`.
        verbose: `0` silent, `1` progress bars, `2` one line per epoch. Defaults
            to `1`.
        target: Deprecated name of `macs_reduction` (a `DeprecationWarning`).
        target_latency: Deprecated name of `latency_reduction` (a
            `DeprecationWarning`).
        **allocation_options: Options of the allocation, e.g. `coefficient=3.7`.

    Returns:
        `(slim_model, report)`: the trained slim model (not compiled) and a
        `CompressionReport`.

    Raises:
        InvalidArgumentError: for missing or malformed data, an `output_dir`
            that holds the record of another run, negative epochs, a
            target together with an allocation instance, bad allocation
            options, or a learning-rate schedule that is not callable or gives
            a rate that is not a finite number >= 0, or a spec together with
            a keyword it holds.
        NothingToPruneError: if the model has no prunable channels.
        UnsupportedModelError: for subclassed or unbuilt models.

    Example:

    ```python
    slim, report = hos_keras.compress(
        model, (x_train, y_train), (x_test, y_test),
        pruning=hos_keras.PruningSpec(criterion="k34", macs_reduction=0.5),
        training=hos_keras.TrainingSpec(distill_epochs=10, finetune_epochs=2),
        verbose=0,
    )
    report.summary()  # compress prints it itself with verbose=1
    slim.save("slim.keras")
    ```
    """
    for old, value in (("target", target), ("target_latency", target_latency)):
        if value is not None:
            # Past many_models' wrapper, to the caller's line.
            warn_renamed(old, RENAMED[old], value, "compress", stacklevel=4)
    macs_reduction = macs_reduction if target is None else target
    latency_reduction = latency_reduction if target_latency is None else target_latency
    pruning = _spec_of(
        PruningSpec,
        "pruning",
        pruning,
        criterion=criterion,
        allocation=allocation,
        allocation_options=allocation_options,
        macs_reduction=macs_reduction,
        latency_reduction=latency_reduction,
        runtime=runtime,
        calibration_steps=calibration_steps,
        scope=scope,
        skip=skip,
        min_channels=min_channels,
        round_to=round_to,
        uniform=uniform,
        seed=seed,
    )
    training = _spec_of(
        TrainingSpec,
        "training",
        training,
        distill_epochs=distill_epochs,
        finetune_epochs=finetune_epochs,
        distill_optimizer=distill_optimizer,
        finetune_optimizer=finetune_optimizer,
        distill_lr_schedule=distill_lr_schedule,
        finetune_lr_schedule=finetune_lr_schedule,
        batch_size=batch_size,
        pivots=pivots,
        n_pivots=n_pivots,
        output_loss=output_loss,
        output_weight=output_weight,
        decay=decay,
        recalibration_steps=recalibration_steps,
        sparse_epochs=sparse_epochs,
        sparse=sparse,
        sparse_optimizer=sparse_optimizer,
    )
    training_lib.check_data("train_data", train_data)
    training_lib.check_data("val_data", val_data)
    check_inputs(model, train_data, "train_data")
    check_inputs(model, val_data, "val_data")
    # A bad schedule fails before any training.
    training.check_schedules()
    if output_dir is not None and not os.path.isdir(output_dir):
        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as error:
            raise InvalidArgumentError(
                f"Received output_dir={output_dir!r}, which cannot be created "
                f"({error.strerror}); choose a writable directory."
            ) from error
    if approach not in APPROACHES:
        raise InvalidArgumentError(
            f"Received approach={approach!r}; pass one of {list(APPROACHES)}."
        )
    given = {
        "macs_reduction": pruning.macs_reduction,
        "latency_reduction": pruning.latency_reduction,
        "scope": None if pruning.scope == "all" else pruning.scope,
        "skip": pruning.skip or None,
        "sparse_epochs": training.sparse_epochs or None,
        "uniform": pruning.uniform or None,
        **pruning.allocation_options,
    }
    given = [f"{k}={v!r}" for k, v in given.items() if v is not None]
    if approach == "decompose" and given:
        raise InvalidArgumentError(
            f"Received approach='decompose' with {', '.join(given)}, which only "
            "pruning uses; pass approach='prune+decompose' to prune as well."
        )
    say = print if verbose else (lambda *_: None)
    probabilities = graph.ends_with_softmax(model)
    if loss is None:
        loss = getattr(
            model, "loss", None
        ) or keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    training_lib.check_labels(model, train_data, loss, "train_data")
    training_lib.check_labels(model, val_data, loss, "val_data")
    metrics = list(metrics)
    record = None
    if output_dir is not None:
        arguments = {
            "approach": approach,
            "target": pruning.macs_reduction,
            "target_latency": pruning.latency_reduction,
            "runtime": pruning.runtime,
            "decompose": [
                decompose_method,
                decompose_factor,
                decompose_ranks,
                decompose_layers,
            ],
            "criterion": pruning.criterion,
            "calibration_steps": pruning.calibration_steps,
            "recalibration_steps": training.recalibration_steps,
            "sparse": [
                training.sparse_epochs,
                training.sparse,
                training.sparse_optimizer,
            ],
            "allocation": pruning.allocation,
            "allocation_options": pruning.allocation_options,
            "scope": pruning.scope,
            "skip": list(pruning.skip),
            "epochs": [training.distill_epochs, training.finetune_epochs],
            "loss": loss,
            "metrics": metrics,
            "optimizers": [training.distill_optimizer, training.finetune_optimizer],
            "schedules": [training.distill_lr_schedule, training.finetune_lr_schedule],
            "batch_size": training.batch_size,
            "distillation": [
                list(training.pivots)
                if isinstance(training.pivots, tuple)
                else training.pivots,
                training.n_pivots,
                training.output_loss,
                training.output_weight,
                training.decay,
            ],
            "channels": [pruning.min_channels, pruning.round_to],
            "uniform": pruning.uniform,
            "seed": pruning.seed,
        }
        # Fields only a spec can set join the record when they are set, so
        # that earlier records still resume.
        arguments.update(
            {
                f.name: getattr(pruning, f.name)
                for f in dataclasses.fields(PruningSpec)
                if f.name
                in ("group_reduction", "verify_latency", "latency_corrections")
                and getattr(pruning, f.name) != f.default
            }
        )
        record = resume.RunRecord(output_dir, resume.fingerprint(model, arguments))
        if record.resumed:
            say(
                f"[hos_keras] resuming the run recorded in {output_dir} "
                f"({plural(record.epochs_done, 'epoch')} of training done)"
            )

    def evaluate(net, key, label):
        """The validation metrics of `net` at stage `key` (recorded once)."""
        found = record.result(key) if record is not None else None
        if found is None:
            say(f"[hos_keras] evaluating: {label}")
            with errors.stage(f"evaluation ({label})"):
                found = training_lib.evaluate_model(
                    net,
                    val_data,
                    loss,
                    metrics,
                    batch_size=training.batch_size,
                    verbose=verbose,
                )
            if record is not None:
                record.record_result(key, found)
        results[key] = found
        return found

    results: dict = {}
    # A copy rebuilt from the config: unlike clone_model it carries no compile
    # state, so its .keras file holds no optimizer slots.
    teacher = type(model).from_config(model.get_config())
    teacher.set_weights(model.get_weights())
    evaluate(teacher, "original", "original")
    student = record.student() if record is not None else None
    if student is None:
        student, plan, decomposition = _compressed_student(
            model,
            train_data,
            val_data,
            evaluate=evaluate,
            say=say,
            approach=approach,
            pruning=pruning,
            training=training,
            latency_model=latency_model,
            decomposing=(decompose_method, decompose_factor, decompose_ranks),
            decompose_layers=decompose_layers,
            loss=loss,
            metrics=metrics,
            verbose=verbose,
            record=record,
        )
        if record is not None:
            record.data["decomposition"] = decomposition
            record.record_student(student)
    else:
        plan = record.plan()
        decomposition = record.data.get("decomposition")
        for key in ("sparse", "pruned", "recalibrated"):
            if record.result(key) is not None:
                results[key] = record.result(key)

    output_loss, pivots = training.output_loss, training.pivots
    if probabilities and output_loss == "softmax_mse":
        output_loss = "logits_mse"  # the outputs are probabilities already
    if pivots == "auto":
        pivots = distill.auto_pivots(student, training.n_pivots, strict=False)
        if training.n_pivots and not pivots:
            say(
                f"[hos_keras] {model.name!r} has too few residual or transformer "
                f"blocks or downsampling stages for {training.n_pivots} pivots: "
                "distilling "
                "with the output loss only (pass pivots=[...] to match intermediate "
                "layers)."
            )
    distiller = distill.HOSDistiller(
        student,
        teacher,
        plan=plan,
        pivots=None if pivots is None else list(pivots),
        output_loss=output_loss,
        output_weight=training.output_weight,
        decay=training.decay,
    )
    labels = {"distill": "distillation", "finetune": "fine-tuning"}
    keys = {"distill": "distilled", "finetune": "finetuned"}
    epochs = {"distill": training.distill_epochs, "finetune": training.finetune_epochs}

    def evaluate_stage(stage):
        evaluate(student, keys[stage], f"after {labels[stage]}")

    initial_epoch, own_callbacks = 0, []
    if record is not None:
        record.restore(distiller)
        initial_epoch = record.epochs_done
        own_callbacks = [record.callback(epochs)]
        # A run killed between the distillation's last epoch and its evaluation.
        if training.distill_epochs and initial_epoch == training.distill_epochs:
            if record.result("distilled") is None:
                evaluate_stage("distill")
            results["distilled"] = record.result("distilled")
    history = training_lib.distill_then_finetune(
        distiller,
        train_data,
        distill_epochs=training.distill_epochs,
        finetune_epochs=training.finetune_epochs,
        loss=loss,
        metrics=metrics,
        distill_optimizer=training.distill_optimizer,
        finetune_optimizer=training.finetune_optimizer,
        distill_lr_schedule=training.distill_lr_schedule,
        finetune_lr_schedule=training.finetune_lr_schedule,
        validation_data=val_data,
        callbacks=[*own_callbacks, *(callbacks or ())],
        batch_size=training.batch_size,
        initial_epoch=initial_epoch,
        verbose=verbose,
        after_stage=evaluate_stage,
    )
    if record is not None:
        history = record.history
        for stage in ("distill", "finetune"):
            if epochs[stage] and keys[stage] not in results:
                # Finished in an earlier call: its evaluation was recorded then
                # (or, for the last stage, the student is as it ended).
                if record.result(keys[stage]) is None:
                    evaluate_stage(stage)
                results[keys[stage]] = record.result(keys[stage])

    report = _report(
        model,
        teacher,
        student,
        val_data,
        results=results,
        plan=plan,
        pivots=pivots,
        history=history,
        approach=approach,
        decomposition=decomposition,
        measurement=(latency_batch_sizes, latency_runs, tflite_latency),
        output_dir=output_dir,
        say=say,
    )
    if verbose:
        report.summary()
    return student, report


def _compressed_student(
    model,
    train_data,
    val_data,
    *,
    evaluate,
    say,
    approach,
    pruning: PruningSpec,
    training: TrainingSpec,
    latency_model,
    decomposing,
    decompose_layers,
    loss,
    metrics,
    verbose,
    record,
):
    """Sparse training, planning, slimming, decomposition and batch-norm
    recalibration, each evaluated: `(student, plan, decomposition report)`."""
    plan = None
    pruned_from = model  # the model the plan is made for and slimmed
    if training.sparse_epochs:
        with errors.stage("sparse training"):
            pruned_from = training_lib.sparse_trained(
                model,
                train_data,
                training.sparse_epochs,
                sparsity_lib.from_argument(
                    training.sparse,
                    criterion=pruning.criterion,
                    scope=pruning.scope,
                    skip=pruning.skip,
                    seed=pruning.seed,
                    data=train_data,
                    calibration_steps=pruning.calibration_steps,
                ),
                optimizer=training.sparse_optimizer,
                loss=loss,
                metrics=metrics,
                batch_size=training.batch_size,
                verbose=verbose,
            )
        evaluate(pruned_from, "sparse", "after sparse training")
    if approach != "decompose":
        plan = record.plan() if record is not None else None
        if plan is None:
            with errors.stage("planning"):
                plan = pruning.plan(
                    pruned_from, train_data, latency_model=latency_model
                )
            if record is not None:
                record.record_plan(plan)
        say(
            f"[hos_keras] plan: {plural(len(plan.groups), 'channel group')}, MACs "
            f"{plan.macs_before:,} -> {plan.macs_after:,} "
            f"({plan.macs_reduction:.1%} fewer)"
        )
    with errors.stage("slimming"):
        student = model if plan is None else surgery.slim_model(pruned_from, plan)
    decomposition = None
    if approach != "prune":
        method, factor, ranks = decomposing
        with errors.stage("decomposition"):
            student, decomposed = decompose(
                student,
                method,
                factor,
                ranks,
                decompose_layers,
                data=keras.tree.map_structure(
                    lambda a: a[:32], training_lib.first_inputs(val_data)
                ),
                return_report=True,
                seed=pruning.seed or 0,
            )
        decomposition = decomposed.to_dict()
        say(
            f"[hos_keras] decomposed {plural(len(decomposed.layers), 'layer')} "
            f"({method}), MACs {decomposed.macs['original']:,} -> "
            f"{decomposed.macs['decomposed']:,}"
        )
    evaluate(
        student,
        "pruned",
        "right after "
        + {"prune": "pruning", "decompose": "decomposition"}.get(
            approach, "pruning and decomposition"
        ),
    )
    steps = training.recalibration_steps
    if steps and batchnorm_layers(student):
        say(
            "[hos_keras] re-estimating batch norms on "
            f"{plural(steps, 'batch', 'batches')}"
        )
        with errors.stage("recalibration"):
            recalibrate_batchnorm(
                student, train_data, steps, batch_size=training.batch_size
            )
        evaluate(student, "recalibrated", "after BN recalibration")
    return student, plan, decomposition


def _spec_of(cls, name: str, spec, **keywords):
    """`spec`, or the spec of `compress`'s keywords when it is `None`.

    With a spec, every keyword it holds must be at the spec's default: one
    value, one place.
    """
    if spec is None:
        return cls(**keywords)
    if not isinstance(spec, cls):
        raise InvalidArgumentError(
            f"Received {name}={spec!r}; pass a hos_keras.{cls.__name__} or None."
        )
    given, defaults = cls(**keywords), cls()
    clashing = [
        f"{f.name}={getattr(given, f.name)!r}"
        for f in dataclasses.fields(cls)
        if getattr(given, f.name) != getattr(defaults, f.name)
    ]
    if clashing:
        raise InvalidArgumentError(
            f"Received {name}={spec!r} with {', '.join(clashing)}; the spec holds "
            f"them: set them there ({name}.replace(...)) and drop the keywords."
        )
    return spec


def _report(
    model,
    teacher,
    student,
    val_data,
    *,
    results,
    plan,
    pivots,
    history,
    approach,
    decomposition,
    measurement,
    output_dir,
    say,
) -> CompressionReport:
    """Measures costs, latency and file sizes; writes the output files."""
    latency_batch_sizes, latency_runs, tflite_latency = measurement
    before, after = profile(model), profile(student)
    latency, tflite = {}, {}
    if latency_runs and (latency_batch_sizes or tflite_latency):
        say("[hos_keras] measuring latency")
        with errors.stage("latency measurement"):
            latency, tflite = latency_lib.original_and_slim(
                model,
                teacher,
                student,
                training_lib.first_inputs(val_data),
                latency_batch_sizes,
                runs=latency_runs,
                tflite=tflite_latency,
            )
    sizes = report_lib.file_sizes(teacher, student, output_dir)
    report = CompressionReport(
        model_name=model.name,
        criterion="none" if plan is None else plan.criterion,
        allocation="none" if plan is None else plan.allocation,
        metrics=results,
        params={"original": before["params"], "slim": after["params"]},
        macs={"original": before["macs"], "slim": after["macs"]},
        latency_ms=latency,
        file_bytes=sizes,
        tflite_latency_ms=tflite,
        layers=report_lib.plan_layers(plan),
        pivots=list(pivots or []),
        history=history,
        details={} if plan is None else dict(plan.details),
        plan=plan,
        approach=approach,
        decomposition=decomposition,
    )
    with errors.stage("writing the output files"):
        if output_dir is not None and plan is not None:
            files.write_text(os.path.join(output_dir, "plan.json"), plan.to_json())
        if output_dir is not None:
            files.write_text(os.path.join(output_dir, "report.json"), report.to_json())
    return report
