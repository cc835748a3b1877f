"""How hos_keras trains and evaluates: data adapters and checks, evaluation,
default optimizers and learning-rate schedules, and the one distill-then-fine-tune
path of `compress`, the tuner, the recipes and the benchmarks.

The paper trains the slim student in two stages (Chatzikonstantinou et al.,
CVPRW 2020, section 3.4): with the auxiliary reconstruction losses against the
unpruned teacher, then with the task loss alone (`distill_then_finetune`).

Keras casts inputs to the model's dtype without a word, so raw uint8 images given
to a model trained on standardized floats run - and give chance accuracy. Every
hos_keras entry point that trains or evaluates (`compress`, `HOSDistiller.fit`,
`HOSPruneCallback`'s calibration data, the tuner's trials) checks the data against
the model's inputs first, and says what to change.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hos_keras import errors, graph
from hos_keras.errors import InvalidArgumentError
from hos_keras.text import plural

__all__ = [
    "check_data",
    "check_inputs",
    "check_lr_schedule",
    "distill_then_finetune",
    "evaluate_model",
    "fresh_optimizer",
    "many_models",
    "sgd",
    "sparse_trained",
]

# The paper's optimizers: SGD with Nesterov momentum 0.9 (section 4), lr 1e-3
# while distilling, 1e-4 while fine-tuning.
DISTILL_LR = 1e-3
FINETUNE_LR = 1e-4
SPARSE_LR = 1e-2


def _first_x(data):
    """The inputs of `data`'s first batch, as `(shape, dtype)` pairs, and
    whether `data` is batched by the caller (arrays are batched by fit)."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        x = spec[0] if isinstance(spec, tuple) else spec
        specs = keras.tree.flatten(x)
        return [(tuple(s.shape), _dtype(s)) for s in specs], True
    if isinstance(data, keras.utils.PyDataset):
        data = data[0]
    if isinstance(data, (tuple, list)) and data and not isinstance(data, np.ndarray):
        x = data[0]
    else:
        x = data
    arrays = keras.tree.flatten(x)
    if not all(hasattr(a, "shape") and hasattr(a, "dtype") for a in arrays):
        raise TypeError("not arrays")  # e.g. a distributed dataset: Keras judges
    return [(tuple(a.shape), _dtype(a)) for a in arrays], False


def _dtype(array) -> str:
    dtype = getattr(array, "dtype", None)
    if dtype is None:
        dtype = np.asarray(array).dtype
    return keras.backend.standardize_dtype(dtype)


def _kind(dtype: str) -> str:
    """`"f"`, `"i"`, `"u"` or `"b"` (bfloat16 is floating point)."""
    return "f" if dtype == "bfloat16" else np.dtype(dtype).kind


def check_inputs(model: keras.Model, data, name: str = "data") -> None:
    """Raises if `data` cannot be what `model` was built for.

    Compares the first batch's inputs with the model's: their number, rank,
    every defined dimension, and the kind of dtype (floating point or integer).

    Args:
        model: A built model.
        data: `(x, y)` or `x` arrays, a `tf.data.Dataset` of batches or a
            `keras.utils.PyDataset`; other kinds are left to Keras.
        name: The argument's name in the message.

    Raises:
        InvalidArgumentError: naming `name`, what the model expects, what the
            data holds, and the fix.
    """
    if data is None or not getattr(model, "inputs", None):
        return
    try:
        given, batched = _first_x(data)
    except (TypeError, IndexError, AttributeError, ValueError):
        return  # a kind of data Keras itself will judge
    expected = [
        (tuple(t.shape), keras.backend.standardize_dtype(t.dtype)) for t in model.inputs
    ]
    _check_input_names(model, data, name)
    if len(given) != len(expected):
        raise InvalidArgumentError(
            f"Model {model.name!r} takes {len(expected)} input(s) but {name} holds "
            f"{len(given)}; pass one array (or tensor) per model input."
        )
    for (shape, dtype), (want, want_dtype) in zip(given, expected, strict=True):
        example, wanted = shape[1:], want[1:]
        per = "per batch" if batched else "per example"
        if len(example) != len(wanted) or any(
            w is not None and e is not None and e != w
            for e, w in zip(example, wanted, strict=False)
        ):
            fix = "reshape it to the model's input"
            if (
                batched
                and len(shape) == len(wanted)
                and all(w is None or s == w for s, w in zip(shape, wanted, strict=True))
            ):
                fix = "batch the dataset (.batch(n))"
            elif len(example) + 1 == len(wanted) and wanted[-1] == 1:
                fix = "add the channel axis (x[..., None])"
            raise InvalidArgumentError(
                f"Model {model.name!r} expects inputs of shape {want} (batch first) "
                f"but {name} has shape {shape} {per}: {fix}."
            )
        if _kind(want_dtype) == "f" and _kind(dtype) in "iub":
            raise InvalidArgumentError(
                f"Model {model.name!r} takes {want_dtype} inputs but {name} holds "
                f"{dtype}: Keras would cast the raw values silently. Scale them as "
                "the model was trained (e.g. x.astype('float32') / 255, or "
                "hos_keras.data.fashion_mnist_arrays(standardize=True))."
            )
        if _kind(want_dtype) in "iu" and _kind(dtype) == "f":
            raise InvalidArgumentError(
                f"Model {model.name!r} takes {want_dtype} inputs (e.g. token ids) "
                f"but {name} holds {dtype}; pass integers."
            )


def _check_input_names(model: keras.Model, data, name: str) -> None:
    """Raises if `data`'s inputs are a dict whose keys are not the model's input
    names (a keras-hub text model takes `token_ids`, `padding_mask`, ...):
    inputs are matched by name, and a misnamed one would be another's."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        x = spec[0] if isinstance(spec, tuple) else spec
    elif isinstance(data, tuple) and data:
        x = data[0]
    else:
        x = data
    if not isinstance(x, dict):
        return
    try:
        structure = graph.io_structure(model)[0]
    except errors.UnsupportedModelError:
        return
    if isinstance(structure, dict):
        wanted = set(structure)
    else:
        wanted = {t.name for t in model.inputs}
    if set(x) != wanted:
        missing, extra = sorted(wanted - set(x)), sorted(set(x) - wanted)
        raise InvalidArgumentError(
            f"Model {model.name!r} takes the inputs {sorted(wanted)} but {name} "
            f"holds a dict with the keys {sorted(x)} (missing {missing}, unknown "
            f"{extra}); name the arrays after the model's inputs."
        )


def _first_labels(data):
    """The labels of `data` as a numpy array and the number of examples they
    belong to (arrays: all of them; datasets: the first batch), or `None` when
    `data` holds no labels in a form read here."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            return None
        batch = next(iter(data.take(1)), None)
        if batch is None:
            return None
        x, y = batch[0], batch[1]
    elif isinstance(data, (tuple, list)) and len(data) >= 2:
        x, y = data[0], data[1]
    else:
        return None
    if y is None or isinstance(y, dict) or not hasattr(y, "shape"):
        return None
    first = keras.tree.flatten(x)[0]
    if not hasattr(first, "shape"):
        return None
    return np.asarray(y), int(first.shape[0])


def _is_sparse(loss) -> bool:
    """Whether `loss` takes integer class labels (Keras' sparse categorical
    losses, by object or by name)."""
    if isinstance(loss, str):
        return loss.startswith("sparse_categorical")
    return isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or (
        getattr(loss, "__name__", "").startswith("sparse_categorical")
    )


def check_labels(model: keras.Model, data, loss, name: str = "data") -> None:
    """Raises if the labels of `data` cannot train or evaluate `model` with
    `loss`, before any backend meets them.

    For a sparse categorical loss (hos_keras' default), the labels must be one
    integer class per example (or, for a sequence output such as a causal
    language model's logits `(n, length, vocabulary)`, one per position) within
    `[0, classes)`, where `classes` is the width of the model's output; one-hot
    rows are refused with the fix. For any
    loss, arrays must hold as many labels as examples. Datasets are checked on
    their first batch; other kinds of data, and models with several outputs, are
    left to Keras.

    Args:
        model: A built model with one output.
        data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches.
        loss: The loss the labels will meet (a Keras loss object or name).
        name: The argument's name in the message.

    Raises:
        InvalidArgumentError: naming `name`, what the labels hold, and the fix.
    """
    if data is None or len(getattr(model, "outputs", None) or ()) != 1:
        return
    found = _first_labels(data)
    if found is None:
        return
    y, examples = found
    if y.ndim == 0 or y.shape[0] != examples:
        raise InvalidArgumentError(
            f"{name} holds {examples} example(s) but {0 if y.ndim == 0 else y.shape[0]}"
            " label(s); pass one label per example."
        )
    if not _is_sparse(loss):
        return
    output = tuple(model.outputs[0].shape)
    classes = output[-1]
    # One class per example, or per position of a sequence output (a causal
    # language model's next tokens: labels (n, length) for logits (n, length,
    # vocabulary)).
    rank = max(len(output) - 1, 1)
    if y.ndim == rank + 1 and y.shape[-1] > 1:
        raise InvalidArgumentError(
            f"{name} holds one-hot labels of shape {tuple(y.shape)} but the loss "
            f"({getattr(loss, 'name', loss)}) takes integer class labels: pass "
            "y.argmax(axis=-1), or loss=keras.losses.CategoricalCrossentropy(...)."
        )
    if y.ndim not in (rank, rank + 1):
        if rank == 1:
            expected, per = "(n,) or (n, 1)", "example"
        else:
            positions = ", ".join(
                "length" if d is None else str(d) for d in output[1:-1]
            )
            expected, per = f"(n, {positions})", "position of each example"
        raise InvalidArgumentError(
            f"{name} holds labels of shape {tuple(y.shape)}; model {model.name!r} "
            f"outputs {output} and the loss takes one integer class per {per} "
            f"(shape {expected})."
        )
    if y.size and not np.all(np.isfinite(y.astype(np.float64))):
        raise InvalidArgumentError(f"{name} holds labels that are NaN or infinite.")
    if y.size and np.any(y.astype(np.float64) != np.round(y.astype(np.float64))):
        raise InvalidArgumentError(
            f"{name} holds non-integer labels (e.g. {y.ravel()[0]!r}); the loss "
            "takes integer class indices."
        )
    if y.size and classes is not None:
        low, high = int(np.min(y)), int(np.max(y))
        if low < 0 or high >= classes:
            raise InvalidArgumentError(
                f"{name} holds labels from {low} to {high} but model {model.name!r} "
                f"outputs {classes} classes (0 to {classes - 1}): map the labels to "
                "0..classes-1, or give the model a head with as many classes."
            )


class _NoRetracingNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def many_models(function):
    """Decorates a pipeline that trains and evaluates several models.

    Keras traces one function per model it fits or evaluates, all from the same
    Python code, and TensorFlow counts traces by code, not by function: a
    pipeline that evaluates the original, the pruned and the recalibrated model
    and then trains a distiller on a few batches each (`--steps` runs) reads to
    it as one function retraced at every call, and it warns "triggered
    tf.function retracing". Inside `function` that notice is dropped; every
    other TensorFlow message passes.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        logger = tf.get_logger()
        notice = _NoRetracingNotice()
        logger.addFilter(notice)
        try:
            return function(*args, **kwargs)
        finally:
            logger.removeFilter(notice)

    return wrapper


# -- data adapters -----------------------------------------------------------


def is_arrays(data) -> bool:
    """Whether `data` is an `(x, y[, sample_weight])` tuple of arrays."""
    return isinstance(data, tuple) and not isinstance(data[0], tf.data.Dataset)


def data_kwargs(data, batch_size: int | None) -> dict:
    """Keyword arguments of fit/evaluate for a dataset or an (x, y[, w]) tuple."""
    if is_arrays(data):
        if len(data) not in (2, 3):
            raise InvalidArgumentError(
                f"Received a tuple of {len(data)} items as data; pass (x, y), "
                "(x, y, sample_weight), a tf.data.Dataset or a keras PyDataset."
            )
        kwargs = {"x": data[0], "y": data[1], "batch_size": batch_size}
        if len(data) == 3:
            kwargs["sample_weight"] = data[2]
        return kwargs
    return {"x": data}


def train_kwargs(data, batch_size: int | None) -> dict:
    """`data_kwargs` for fit: datasets are shuffled by their own pipeline, so
    fit's `shuffle` is on for arrays only (no "shuffle ignored" notice)."""
    kwargs = data_kwargs(data, batch_size)
    kwargs["shuffle"] = is_arrays(data)
    return kwargs


def first_inputs(data):
    """The inputs of the first batch of `data`, as numpy arrays."""
    if is_arrays(data):
        x = data[0]
    elif isinstance(data, tf.data.Dataset):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(next(iter(data.take(1))))
    elif isinstance(data, keras.utils.PyDataset):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data[0])
    else:
        raise InvalidArgumentError(
            f"Received data of type {type(data).__name__}; pass (x, y), a "
            "tf.data.Dataset or a keras PyDataset."
        )
    return keras.tree.map_structure(np.asarray, x)


def check_data(name: str, data) -> None:
    """Raises unless `data` is a kind of training data hos_keras takes.

    Args:
        name: The argument's name in the message.
        data: `(x, y[, sample_weight])` arrays, a batched `tf.data.Dataset` or a
            `keras.utils.PyDataset`.

    Raises:
        InvalidArgumentError: for None, another type, or a tuple of the wrong
            length.
    """
    if data is None:
        raise InvalidArgumentError(
            f"Received {name}=None; pass (x, y) arrays, a batched tf.data.Dataset "
            "or a keras PyDataset."
        )
    if is_arrays(data):
        data_kwargs(data, 1)
    elif not isinstance(data, (tf.data.Dataset, keras.utils.PyDataset)):
        raise InvalidArgumentError(
            f"Received {name} of type {type(data).__name__}; pass (x, y) arrays, a "
            "batched tf.data.Dataset or a keras PyDataset."
        )


def evaluate_model(
    model: keras.Model, data, loss, metrics, *, batch_size=None, verbose=0
) -> dict[str, float]:
    """`evaluate` results of a model, without compiling the model itself.

    A functional view sharing the layers is compiled instead, so the model keeps
    no compile state (its .keras file holds no optimizer).

    Args:
        model: A built functional or Sequential model.
        data: As `check_data` takes.
        loss: The loss to report.
        metrics: The metrics to report.
        batch_size: Batch size for arrays. Defaults to `None` (Keras's 32).
        verbose: `evaluate`'s verbosity. Defaults to `0`.

    Returns:
        `{"loss": ..., <metric>: ...}` as Python floats.
    """
    view = keras.Model(model.inputs, model.outputs, name=model.name)
    view.compile(loss=loss, metrics=metrics)
    values = view.evaluate(
        **data_kwargs(data, batch_size), return_dict=True, verbose=verbose
    )
    return {k: float(v) for k, v in values.items()}


def accuracy_of(results: dict[str, float]) -> float | None:
    """The first value of `evaluate` results whose name contains "accuracy"."""
    return next((v for k, v in results.items() if "accuracy" in k), None)


# -- optimizers and schedules ------------------------------------------------


def sgd(
    learning_rate: float,
    *,
    steps: int | None = None,
    weight_decay: float | None = None,
    nesterov: bool = True,
) -> keras.optimizers.SGD:
    """hos_keras's default optimizer: SGD with momentum 0.9, Nesterov by default
    (the paper's, section 4).

    Args:
        learning_rate: The learning rate (the peak, with `steps`).
        steps: If given, the rate decays to 0 over this many steps (cosine).
            Defaults to `None` (constant).
        weight_decay: Decoupled weight decay. Defaults to `None`.
        nesterov: Nesterov momentum. Defaults to `True`.

    Returns:
        A new `keras.optimizers.SGD`.
    """
    rate = learning_rate
    if steps is not None:
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, max(int(steps), 1))
    return keras.optimizers.SGD(
        rate, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay
    )


def fresh_optimizer(identifier, learning_rate: float) -> keras.optimizers.Optimizer:
    """A new optimizer: `sgd(learning_rate)` for None, else from a name, a config
    dict, or a copy of an instance (so that a stage never inherits the slots of
    another)."""
    if identifier is None:
        return sgd(learning_rate)
    if isinstance(identifier, keras.optimizers.Optimizer):
        return keras.optimizers.deserialize(keras.optimizers.serialize(identifier))
    return keras.optimizers.get(identifier)


def check_lr_schedule(name: str, schedule):
    """A learning-rate schedule argument, checked.

    Args:
        name: The argument's name in the messages.
        schedule: None, a `keras.optimizers.schedules.LearningRateSchedule`, or a
            function of the epoch returning the learning rate.

    Returns:
        None, the `LearningRateSchedule` itself, or a checked version of the
        epoch function in the `(epoch, lr)` form `LearningRateScheduler` calls.

    Raises:
        InvalidArgumentError: if `schedule` is not callable, or gives a rate at
            epoch 0 that is not a finite number >= 0.
    """
    if schedule is None or isinstance(
        schedule, keras.optimizers.schedules.LearningRateSchedule
    ):
        return schedule
    if not callable(schedule):
        raise InvalidArgumentError(
            f"Received {name}={schedule!r}; pass a function of the epoch returning "
            "the learning rate (e.g. lambda epoch: 1e-3 * 0.1 ** (epoch >= 80)) or "
            "a keras.optimizers.schedules.LearningRateSchedule."
        )

    def rate(epoch: int, _current_rate: float | None = None) -> float:
        value = schedule(epoch)
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidArgumentError(
                f"{name} returned {value!r} for epoch {epoch}; return a finite "
                "learning rate >= 0 as a Python float."
            )
        return float(value)

    rate(0)  # a bad schedule fails before any training
    return rate


def _scheduled(optimizer: keras.optimizers.Optimizer, schedule, first_epoch: int):
    """`optimizer` rebuilt with `schedule` as its learning rate, and the callbacks
    that apply it (a `LearningRateScheduler` for an epoch function, which counts
    epochs from `first_epoch`, the stage's first)."""
    if schedule is None:
        return optimizer, []
    config = optimizer.get_config()
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        config["learning_rate"] = schedule
        return type(optimizer).from_config(config), []
    config["learning_rate"] = schedule(0)
    scheduler = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr=None: schedule(epoch - first_epoch)
    )
    return type(optimizer).from_config(config), [scheduler]


# -- the training stages -----------------------------------------------------


def sparse_trained(
    model: keras.Model,
    train_data,
    epochs: int,
    sparsity: keras.callbacks.Callback,
    *,
    loss,
    metrics: Sequence = (),
    optimizer=None,
    batch_size: int | None = None,
    verbose: int = 0,
) -> keras.Model:
    """A copy of `model` after `epochs` of sparse training (`GroupSparsity`).

    Args:
        model: A built functional or Sequential model; it is not modified.
        train_data: As `check_data` takes.
        epochs: Epochs of training with the task loss and `sparsity`.
        sparsity: A `hos_keras.GroupSparsity` callback made for `model`.
        loss: The task loss.
        metrics: Metrics to compile. Defaults to `()`.
        optimizer: As `fresh_optimizer` takes. Defaults to `None`: `sgd(1e-2)`.
        batch_size: Batch size for arrays. Defaults to `None`.
        verbose: fit's verbosity. Defaults to `0`.

    Returns:
        The trained copy (compiled).
    """
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.compile(
        optimizer=fresh_optimizer(optimizer, SPARSE_LR),
        loss=loss,
        metrics=list(metrics),
    )
    if verbose:
        print(
            f"[hos_keras] sparse training: {plural(epochs, 'epoch')} "
            f"({sparsity.method}, strength {sparsity.strength:g})"
        )
    copy.fit(
        **train_kwargs(train_data, batch_size),
        epochs=epochs,
        callbacks=[sparsity],
        verbose=verbose,
    )
    return copy


_STAGE_NAMES = {"distill": "distillation", "finetune": "fine-tuning"}


def distill_then_finetune(
    distiller,
    train_data,
    *,
    distill_epochs: int,
    finetune_epochs: int,
    loss,
    metrics: Sequence = (),
    distill_optimizer=None,
    finetune_optimizer=None,
    distill_lr: float = DISTILL_LR,
    finetune_lr: float = FINETUNE_LR,
    distill_lr_schedule=None,
    finetune_lr_schedule=None,
    validation_data=None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    batch_size: int | None = None,
    initial_epoch: int = 0,
    verbose: int = 0,
    after_stage: Callable[[str], Any] | None = None,
    **fit_kwargs,
) -> dict[str, dict[str, list[float]]]:
    """Trains a `HOSDistiller`'s student with the auxiliary losses, then without.

    The paper's two stages (section 3.4): `distill_epochs` with the task loss,
    the output MSE and the pivot MSEs against the teacher, then
    `finetune_epochs` with the task loss alone, each with its own fresh
    optimizer. Epochs count on across both stages (the fine-tuning's first
    epoch is `distill_epochs`), so a run resumed at `initial_epoch` (as
    KerasTuner's Hyperband does) trains only what is left.

    Args:
        distiller: A `hos_keras.HOSDistiller`.
        train_data: As `check_data` takes.
        distill_epochs: Epochs with the auxiliary losses; `0` skips the stage.
        finetune_epochs: Epochs without them; `0` skips the stage.
        loss: The task loss.
        metrics: Metrics to compile. Defaults to `()`.
        distill_optimizer: The distillation's optimizer: as `fresh_optimizer`
            takes (a name, a config or an instance, copied), or the distiller's
            own compiled optimizer (kept as it is, with its slots). Defaults to
            `None`: `sgd(distill_lr)`.
        finetune_optimizer: The same for the fine-tuning. Defaults to `None`:
            `sgd(finetune_lr)`.
        distill_lr: Learning rate of the default distillation optimizer.
            Defaults to `1e-3`, the paper's.
        finetune_lr: The same for the fine-tuning. Defaults to `1e-4`.
        distill_lr_schedule: Replaces the distillation's learning rate: a
            function of the epoch counted from 0 within the stage (applied at
            the start of each epoch), or a `LearningRateSchedule` of the
            optimizer's step (see `check_lr_schedule`). Defaults to `None`.
        finetune_lr_schedule: The same for the fine-tuning. Defaults to `None`.
        validation_data: Given to fit. Defaults to `None`.
        callbacks: Keras callbacks of both stages. Defaults to `()`.
        batch_size: Batch size for arrays. Defaults to `None`.
        initial_epoch: The epoch to start from (stages wholly before it are
            skipped). Defaults to `0`.
        verbose: fit's verbosity; with it, a line announces each stage.
            Defaults to `0`.
        after_stage: Called with `"distill"` or `"finetune"` after each stage
            that trained (e.g. to evaluate the student). Defaults to `None`.
        **fit_kwargs: Other arguments of `fit` (e.g. `steps_per_epoch`).

    Returns:
        `{"distill": history, "finetune": history}` for the stages that trained,
        each the `History.history` dict as Python floats.

    Example:

    ```python
    distiller = hos_keras.HOSDistiller(student, teacher, plan=plan)
    hos_keras.training.distill_then_finetune(
        distiller, train_ds, distill_epochs=10, finetune_epochs=2,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """
    schedules = {
        "distill": check_lr_schedule("distill_lr_schedule", distill_lr_schedule),
        "finetune": check_lr_schedule("finetune_lr_schedule", finetune_lr_schedule),
    }
    stages = (
        ("distill", True, distill_epochs, distill_optimizer, distill_lr),
        ("finetune", False, finetune_epochs, finetune_optimizer, finetune_lr),
    )
    history = {}
    fit_kwargs = {**train_kwargs(train_data, batch_size), **fit_kwargs}
    first = 0
    for stage, auxiliary, epochs, optimizer, rate in stages:
        last = first + int(epochs)
        if epochs and initial_epoch < last:
            distiller.set_auxiliary(auxiliary)
            own = optimizer is not None and optimizer is getattr(
                distiller, "optimizer", None
            )
            if not own or schedules[stage] is not None:
                optimizer, schedulers = _scheduled(
                    fresh_optimizer(optimizer, rate), schedules[stage], first
                )
                distiller.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
            else:
                schedulers = []
            if verbose:
                print(
                    f"[hos_keras] {stage}: {plural(epochs, 'epoch')} "
                    f"{'with' if auxiliary else 'without'} the auxiliary losses"
                )
            with errors.stage(_STAGE_NAMES[stage]):
                run = distiller.fit(
                    **fit_kwargs,
                    validation_data=validation_data,
                    epochs=last,
                    initial_epoch=max(initial_epoch, first),
                    callbacks=[*schedulers, *callbacks],
                    verbose=verbose,
                )
            history[stage] = {
                k: [float(v) for v in vs] for k, vs in run.history.items()
            }
            if after_stage is not None:
                after_stage(stage)
        first = last
    return history
