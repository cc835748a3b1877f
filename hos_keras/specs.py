"""Specs: the planning and training parameters every entry point shares.

`PruningSpec` says what to prune and how far (criterion, allocation, a MACs or
latency target, widths, scope, calibration); `TrainingSpec` says how the slim
student recovers (the distillation with auxiliary reconstruction losses, then
the fine-tuning; Chatzikonstantinou et al., "Neural Network Compression Using
Higher-Order Statistics and Auxiliary Reconstruction Losses", CVPRW 2020,
section 3.4). Both are frozen dataclasses, checked when made, written to and
read from JSON, and accepted by `compress`, `tuner.HOSHyperModel`,
`HOSPruneCallback`, the `hos-keras` command and the recipes, so that each
parameter has one name and one documentation.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from hos_keras import allocation as allocation_lib
from hos_keras import criteria, hub_models, training
from hos_keras.errors import ArgumentTypeError, InvalidArgumentError
from hos_keras.plan import plan_pruning
from hos_keras.plan_record import PruningPlan

__all__ = ["PruningSpec", "TrainingSpec", "needs_data"]

_SCOPES = ("all", "inner", "conv")
_RUNTIMES = ("tflite", "tf")
_REDUCTIONS = ("mean", "max", "sum")
_OUTPUT_LOSSES = ("softmax_mse", "logits_mse")
# Keywords plan_pruning takes itself, which a spec holds as fields (or gets in
# `plan`): never allocation options.
_PLANNER_KEYWORDS = frozenset(
    {
        "min_channels",
        "round_to",
        "seed",
        "group_reduction",
        "scope",
        "skip",
        "runtime",
        "latency_model",
        "verify_latency",
        "latency_corrections",
        "data",
        "calibration_steps",
        "calibration_loss",
        "macs_reduction",
        "latency_reduction",
    }
)
# The old names of the targets, by entry point, and the new ones.
RENAMED = {
    "target": "macs_reduction",
    "target_latency": "latency_reduction",
    "target_reduction": "macs_reduction",
}


def needs_data(criterion="k34", allocation="shapiro") -> bool:
    """Whether planning with `criterion` and `allocation` reads calibration data.

    A criterion needs data when it scores feature maps or gradients (its
    `statistics` name the calibration statistics it reads: `"dfs"`, `"sfs"`,
    `"taylor"`, `"fisher"`, `"activation_*"`, ...); an allocation when it says
    so (`needs_data = True`, as `"itpruner"`).

    Args:
        criterion: A criterion name (see `criterion_names()`) or callable.
            Defaults to `"k34"`.
        allocation: An allocation name (see `allocation_names()`), class or
            instance. Defaults to `"shapiro"`.

    Returns:
        `True` if `plan_pruning` needs `data=` for them.

    Raises:
        UnknownNameError: for an unknown criterion or allocation name.

    Example:

    ```python
    hos_keras.specs.needs_data("taylor", "shapiro")  # True
    hos_keras.specs.needs_data("k34", "itpruner")    # True
    hos_keras.specs.needs_data("k34", "shapiro")     # False
    ```
    """
    if getattr(criteria.get_criterion(criterion), "statistics", ()):
        return True
    if isinstance(allocation, str):
        allocation = _allocation_class(allocation)
    return bool(getattr(allocation, "needs_data", False))


# Allocations that cannot be made without an option, for `_allocation_class`.
_DEFAULT_KNOBS = {
    "target": {"macs_reduction": 0.5},
    "itpruner": {"macs_reduction": 0.5},
}


def _allocation_class(name: str) -> type[allocation_lib.Allocation]:
    if name not in allocation_lib.allocation_names():
        raise InvalidArgumentError(
            f"Received allocation={name!r}; pass one of "
            f"{allocation_lib.allocation_names()} or an Allocation instance."
        )
    return type(allocation_lib.get_allocation(name, **_DEFAULT_KNOBS.get(name, {})))


def spec_allocation(spec: PruningSpec) -> tuple[object, dict]:
    """`(allocation, options)` of `spec` for `plan_pruning` or `get_allocation`:
    the name `allocation.for_target` would build, with its options (the target
    among them), for callers that make the allocation themselves."""
    options = dict(spec.allocation_options)
    target = {
        k: v
        for k, v in (
            ("macs_reduction", spec.macs_reduction),
            ("latency_reduction", spec.latency_reduction),
        )
        if v is not None
    }
    if not target or spec.allocation in ("target", "itpruner"):
        return spec.allocation, {**target, **options}
    return "target", {"base": spec.allocation, **target, **options}


def warn_renamed(old: str, new: str, value, where: str, stacklevel: int = 3) -> None:
    """Warns that `old=` of `where` is `new=` now (a `DeprecationWarning`)."""
    warnings.warn(
        f"{where}: {old}= is deprecated and will be removed; pass "
        f"{new}={value!r} instead.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def _fail(spec: str, field: str, value, fix: str):
    raise InvalidArgumentError(f"{spec} received {field}={value!r}; {fix}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fraction(spec: str, field: str, value):
    if value is None:
        return None
    if not _is_number(value) or not 0.0 < float(value) < 1.0:
        _fail(spec, field, value, "pass a fraction in (0, 1), e.g. 0.5, or None.")
    return float(value)


def _count(spec: str, field: str, value, minimum: int, none: bool = False):
    if value is None and none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        extra = " or None" if none else ""
        _fail(spec, field, value, f"pass an integer >= {minimum}{extra}.")
    return value


def _flag(spec: str, field: str, value) -> bool:
    if not isinstance(value, bool):
        _fail(spec, field, value, "pass True or False.")
    return value


def _json_value(spec: str, field: str, value):
    """`value` as JSON can hold it: Keras objects as their serialized config."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(spec, field, v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(spec, field, v) for k, v in value.items()}
    if hasattr(value, "get_config"):
        return {"keras_object": keras.saving.serialize_keras_object(value)}
    raise ArgumentTypeError(
        f"{spec}.to_dict() cannot write {field}={value!r} to JSON (a "
        f"{type(value).__name__}); give it by name or as a Keras object with "
        "get_config, or keep this spec in Python."
    )


def _python_value(value):
    """The inverse of `_json_value`."""
    if isinstance(value, list):
        return [_python_value(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"keras_object"}:
            return keras.saving.deserialize_keras_object(value["keras_object"])
        return {k: _python_value(v) for k, v in value.items()}
    return value


class _Spec:
    """What both specs share: `replace`, `to_dict` and `from_dict`."""

    def replace(self, **changes):
        """A copy with `changes` (checked as a new spec)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The spec as a dict of JSON values (Keras objects as their config).

        Raises:
            ArgumentTypeError: for a field JSON cannot hold (a function, an
                instance without `get_config`).
        """
        name = type(self).__name__
        return {
            f.name: _json_value(name, f.name, getattr(self, f.name))
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, config: Mapping):
        """The spec a `to_dict()` result (or a hand-written dict) describes.

        Raises:
            InvalidArgumentError: for an unknown field (the message lists the
                valid ones) or an invalid value.
        """
        if not isinstance(config, Mapping):
            raise ArgumentTypeError(
                f"{cls.__name__}.from_dict received {config!r}; pass a dict such "
                "as spec.to_dict() returns."
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise InvalidArgumentError(
                f"{cls.__name__}.from_dict received unknown fields {unknown}; "
                f"valid fields are {known}."
            )
        return cls(**{k: _python_value(v) for k, v in config.items()})


@dataclasses.dataclass(frozen=True)
class PruningSpec(_Spec):
    """What to prune and how far: the arguments of one pruning plan.

    One object for every entry point: `compress(..., pruning=spec)`,
    `tuner.HOSHyperModel(model, pruning=spec)`,
    `HOSPruneCallback(epochs, pruning=spec)`, `hos-keras prune --spec
    spec.json`, and `spec.plan(model)` for `plan_pruning` itself. Every field
    is checked when the spec is made; `to_dict`/`from_dict` round-trip it
    through JSON.

    Args:
        criterion: Filter criterion name (see `criterion_names()`) or callable.
            Defaults to `"k34"`, the paper's k3 * k4.
        allocation: Allocation name (see `allocation_names()`) or an
            `Allocation` instance (only without a target). With a target, the
            allocation whose knob is searched (`"target"` searches
            `"shapiro"`'s). Defaults to `"shapiro"`.
        allocation_options: Options of the allocation, e.g.
            `{"coefficient": 3.7}` (P1-P3), `{"fraction": 0.32}` (global),
            `{"ratio": 0.3}` (fixed), `{"beta": 1.0}` (itpruner). Defaults to
            `{}`.
        macs_reduction: Fraction of MACs to remove, in (0, 1): the allocation's
            knob is searched to reach it (`TargetAllocation`). Defaults to
            `None` (no target).
        latency_reduction: Fraction of the latency on `runtime` to remove, in
            (0, 1) (`0.5`: 2x faster); exclusive with `macs_reduction`.
            Defaults to `None`.
        runtime: Runtime of a latency target and of `round_to="auto"`:
            `"tflite"` or `"tf"`. Defaults to `"tflite"`.
        min_channels: Fewest channels any group keeps. Defaults to `1`.
        round_to: Kept channels rounded up to a multiple of this, or `"auto"`
            for the channel tile measured on `runtime`. Defaults to `1`.
        scope: Which groups may be pruned: `"all"`, `"inner"` (the paper's
            scope: no channel crossing a residual merge), `"conv"`, or a
            function from a `ChannelGroup` to a bool. Defaults to `"all"`.
        skip: Names or shell-style patterns of groups never pruned. Defaults
            to `()`.
        group_reduction: How a group's producer scores combine: `"mean"`,
            `"max"` or `"sum"`. Defaults to `"mean"`.
        seed: Seed of the randomized criteria. Defaults to `0`.
        uniform: Pass the plan through `uniform_plan` (the same heads and MLP
            units in every transformer block). Defaults to `False`.
        calibration_steps: Batches of calibration data a data-driven criterion
            or allocation reads (`None`: all of them). Defaults to `16`.
        verify_latency: With a latency target, measure the slim model on
            `runtime` and correct the plan. Defaults to `True`.
        latency_corrections: Further plans measured when a latency target is
            missed (see `plan_pruning`). Defaults to `4`.

    Raises:
        InvalidArgumentError: for a field out of its range or set (the message
            names the field and the value, and says what to pass).

    Example:

    ```python
    spec = hos_keras.PruningSpec(criterion="k34", macs_reduction=0.5)
    plan = spec.plan(hos_keras.models.cifar_resnet(20))
    spec.to_dict()["macs_reduction"]  # 0.5
    ```
    """

    criterion: str | Callable = "k34"
    allocation: str | allocation_lib.Allocation = "shapiro"
    allocation_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    macs_reduction: float | None = None
    latency_reduction: float | None = None
    runtime: str = "tflite"
    min_channels: int = 1
    round_to: int | str = 1
    scope: str | Callable = "all"
    skip: Sequence[str] = ()
    group_reduction: str = "mean"
    seed: int | None = 0
    uniform: bool = False
    calibration_steps: int | None = 16
    verify_latency: bool = True
    latency_corrections: int = 4

    def __post_init__(self):
        name = "PruningSpec"
        if isinstance(self.criterion, str):
            if self.criterion not in criteria.criterion_names():
                _fail(
                    name,
                    "criterion",
                    self.criterion,
                    f"pass one of {criteria.criterion_names()} or a callable.",
                )
        elif not callable(self.criterion):
            _fail(name, "criterion", self.criterion, "pass a name or a callable.")
        if isinstance(self.allocation, str):
            if self.allocation not in allocation_lib.allocation_names():
                _fail(
                    name,
                    "allocation",
                    self.allocation,
                    f"pass one of {allocation_lib.allocation_names()} or an "
                    "Allocation instance.",
                )
        elif not isinstance(self.allocation, allocation_lib.Allocation):
            _fail(
                name,
                "allocation",
                self.allocation,
                f"pass one of {allocation_lib.allocation_names()} or an "
                "Allocation instance.",
            )
        if not isinstance(self.allocation_options, Mapping):
            _fail(
                name,
                "allocation_options",
                self.allocation_options,
                "pass a dict such as {'coefficient': 3.7}.",
            )
        options = dict(self.allocation_options)
        clashing = sorted(set(options) & _PLANNER_KEYWORDS)
        if clashing:
            _fail(
                name,
                "allocation_options",
                options,
                f"{clashing} are fields of PruningSpec (or arguments of "
                "PruningSpec.plan); set them there.",
            )
        object.__setattr__(self, "allocation_options", options)
        macs = _fraction(name, "macs_reduction", self.macs_reduction)
        latency = _fraction(name, "latency_reduction", self.latency_reduction)
        if macs is not None and latency is not None:
            _fail(
                name,
                "latency_reduction",
                latency,
                f"it excludes macs_reduction={macs!r}: ask for a share of MACs or "
                "a share of latency, not both.",
            )
        if (macs is not None or latency is not None) and not isinstance(
            self.allocation, str
        ):
            _fail(
                name,
                "allocation",
                self.allocation,
                "with a target pass the allocation whose knob is searched by name "
                "(e.g. 'shapiro'), or give the instance its target and drop "
                "macs_reduction/latency_reduction.",
            )
        object.__setattr__(self, "macs_reduction", macs)
        object.__setattr__(self, "latency_reduction", latency)
        if self.runtime not in _RUNTIMES:
            _fail(name, "runtime", self.runtime, f"pass one of {list(_RUNTIMES)}.")
        _count(name, "min_channels", self.min_channels, 1)
        if self.round_to != "auto":
            _count(name, "round_to", self.round_to, 1)
        if not (self.scope in _SCOPES or callable(self.scope)):
            _fail(
                name,
                "scope",
                self.scope,
                f"pass one of {list(_SCOPES)} or a function of a ChannelGroup.",
            )
        skip = (self.skip,) if isinstance(self.skip, str) else self.skip
        if not isinstance(skip, Sequence) or not all(isinstance(s, str) for s in skip):
            _fail(name, "skip", self.skip, "pass a list of names or patterns.")
        object.__setattr__(self, "skip", tuple(skip))
        if self.group_reduction not in _REDUCTIONS:
            _fail(
                name,
                "group_reduction",
                self.group_reduction,
                f"pass one of {list(_REDUCTIONS)}.",
            )
        _count(name, "seed", self.seed, 0, none=True)
        _flag(name, "uniform", self.uniform)
        _count(name, "calibration_steps", self.calibration_steps, 1, none=True)
        _flag(name, "verify_latency", self.verify_latency)
        _count(name, "latency_corrections", self.latency_corrections, 0)

    @property
    def needs_data(self) -> bool:
        """Whether planning reads calibration data (see `needs_data`)."""
        return needs_data(self.criterion, self.allocation)

    def allocator(self) -> allocation_lib.Allocation:
        """The `Allocation` of `allocation`, its options and the target."""
        return allocation_lib.for_target(
            self.allocation,
            self.macs_reduction,
            self.latency_reduction,
            **self.allocation_options,
        )

    def plan(
        self,
        model: keras.Model,
        data=None,
        *,
        latency_model=None,
        calibration_loss=None,
    ) -> PruningPlan:
        """Plans the pruning of `model` by this spec (`plan_pruning`).

        Args:
            model: A built functional or Sequential Keras model (not modified).
            data: Calibration data, `(x, y)` arrays or a `tf.data.Dataset` of
                `(x, y)` batches; read only when the criterion or allocation
                needs data (`needs_data`). Defaults to `None`.
            latency_model: A `hos_keras.latency.LatencyModel` of `model` for a
                latency target. Defaults to `None` (built for `runtime`).
            calibration_loss: Loss of the gradient criteria. Defaults to `None`.

        Returns:
            A `PruningPlan`.

        Raises:
            InvalidArgumentError: when the criterion or allocation needs data
                and `data` is `None`, and as `plan_pruning`.
        """
        calibration = {}
        if self.needs_data:
            if data is None:
                raise InvalidArgumentError(
                    f"PruningSpec(criterion={self.criterion!r}, allocation="
                    f"{self.allocation!r}) reads calibration data; pass data=(x, y) "
                    "or a tf.data.Dataset."
                )
            calibration = {
                "data": data,
                "calibration_steps": self.calibration_steps,
                "calibration_loss": calibration_loss,
            }
        plan = plan_pruning(
            model,
            self.criterion,
            self.allocator(),
            min_channels=self.min_channels,
            round_to=self.round_to,
            seed=self.seed,
            group_reduction=self.group_reduction,
            scope=self.scope,
            skip=self.skip,
            runtime=self.runtime,
            latency_model=latency_model,
            verify_latency=self.verify_latency,
            latency_corrections=self.latency_corrections,
            **calibration,
        )
        return hub_models.uniform_plan(model, plan) if self.uniform else plan


@dataclasses.dataclass(frozen=True)
class TrainingSpec(_Spec):
    """How the slim student recovers: distillation, then fine-tuning.

    The distillation trains the student against the unpruned teacher with the
    task loss, the output MSE and the pivot MSEs (`HOSDistiller`, paper section
    3.4); the fine-tuning uses the task loss only. Sparse training before the
    planning and the batch-norm re-estimation after slimming belong here too.
    Accepted by `compress(..., training=spec)` and `tuner.HOSHyperModel`.

    Args:
        distill_epochs: Epochs with the auxiliary losses; `0` skips. Defaults
            to `1`.
        finetune_epochs: Epochs with the task loss only; `0` skips. Defaults to
            `1`.
        distill_optimizer: Optimizer name, config or instance (copied) of the
            distillation. Defaults to `None`: SGD(1e-3, momentum 0.9,
            Nesterov), the paper's setting.
        finetune_optimizer: The same for the fine-tuning. Defaults to `None`:
            SGD(1e-4, momentum 0.9, Nesterov).
        distill_lr_schedule: The distillation's learning rate over time: a
            function of the epoch, or a
            `keras.optimizers.schedules.LearningRateSchedule` (see `compress`).
            Defaults to `None` (the optimizer's own rate).
        finetune_lr_schedule: The same for the fine-tuning. Defaults to `None`.
        batch_size: Batch size when the data are arrays. Defaults to `64`.
        pivots: `"auto"`, layer names or `None` (see `HOSDistiller`). Defaults
            to `"auto"`.
        n_pivots: Number of automatic pivots. Defaults to `2`.
        output_loss: `"softmax_mse"` or `"logits_mse"`. Defaults to
            `"softmax_mse"`.
        output_weight: Weight of the output MSE, or `None` for the reference's
            (5 with pivot losses, 1 without). Defaults to `None`.
        decay: Exponent of the pivot weights. Defaults to `3.0`.
        recalibration_steps: Batches on which the slim model's batch norms are
            re-estimated before training; `0` skips. Defaults to `8`.
        sparse_epochs: Epochs of sparse training before planning
            (`GroupSparsity`); `0` for none. Defaults to `0`.
        sparse: `GroupSparsity` arguments (a dict) or instance. Defaults to
            `None` (its defaults).
        sparse_optimizer: Optimizer of the sparse training. Defaults to `None`:
            SGD(1e-2, momentum 0.9, Nesterov).

    Raises:
        InvalidArgumentError: for a field out of its range or set (the message
            names the field and the value, and says what to pass).

    Example:

    ```python
    spec = hos_keras.TrainingSpec(distill_epochs=10, finetune_epochs=2,
                                  distill_optimizer="adam")
    hos_keras.TrainingSpec.from_dict(spec.to_dict()) == spec  # True
    ```
    """

    distill_epochs: int = 1
    finetune_epochs: int = 1
    distill_optimizer: Any = None
    finetune_optimizer: Any = None
    distill_lr_schedule: Any = None
    finetune_lr_schedule: Any = None
    batch_size: int = 64
    pivots: str | Sequence[str] | None = "auto"
    n_pivots: int = 2
    output_loss: str = "softmax_mse"
    output_weight: float | None = None
    decay: float = 3.0
    recalibration_steps: int = 8
    sparse_epochs: int = 0
    sparse: Any = None
    sparse_optimizer: Any = None

    def __post_init__(self):
        name = "TrainingSpec"
        _count(name, "distill_epochs", self.distill_epochs, 0)
        _count(name, "finetune_epochs", self.finetune_epochs, 0)
        for field in ("distill_lr_schedule", "finetune_lr_schedule"):
            value = getattr(self, field)
            if value is not None and not callable(value):
                _fail(
                    name,
                    field,
                    value,
                    "pass a function of the epoch returning the learning rate or "
                    "a keras.optimizers.schedules.LearningRateSchedule.",
                )
        _count(name, "batch_size", self.batch_size, 1)
        pivots = self.pivots
        if isinstance(pivots, list | tuple):
            if not all(isinstance(p, str) for p in pivots):
                _fail(name, "pivots", pivots, "pass layer names, 'auto' or None.")
            object.__setattr__(self, "pivots", tuple(pivots))
        elif pivots not in ("auto", None):
            _fail(name, "pivots", pivots, "pass 'auto', a list of layer names or None.")
        _count(name, "n_pivots", self.n_pivots, 0)
        if self.output_loss not in _OUTPUT_LOSSES:
            _fail(
                name,
                "output_loss",
                self.output_loss,
                f"pass one of {list(_OUTPUT_LOSSES)}.",
            )
        weight = self.output_weight
        if weight is not None and (
            not _is_number(weight) or not math.isfinite(weight) or weight < 0
        ):
            _fail(name, "output_weight", weight, "pass a finite number >= 0 or None.")
        if not _is_number(self.decay) or not math.isfinite(self.decay):
            _fail(name, "decay", self.decay, "pass a finite number, e.g. 3.0.")
        _count(name, "recalibration_steps", self.recalibration_steps, 0)
        _count(name, "sparse_epochs", self.sparse_epochs, 0)

    def check_schedules(self) -> None:
        """Calls each learning-rate schedule at epoch 0, so that a bad one fails
        before any training (`InvalidArgumentError` naming it)."""
        training.check_lr_schedule("distill_lr_schedule", self.distill_lr_schedule)
        training.check_lr_schedule("finetune_lr_schedule", self.finetune_lr_schedule)
