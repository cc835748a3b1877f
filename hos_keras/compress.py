"""`compress`: the whole HOS pipeline in one call, with a before/after report.

score -> allocate -> slim -> distill with the auxiliary reconstruction losses ->
fine-tune without them (Chatzikonstantinou et al., "Neural Network Compression
Using Higher-Order Statistics and Auxiliary Reconstruction Losses", CVPRW 2020,
sections 3.1-3.4). This module only orchestrates; each step lives in its own
module (`plan`, `surgery`, `distill`, `profile`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hos_keras import allocation as allocation_lib
from hos_keras import distill, graph, surgery
from hos_keras import latency as latency_lib
from hos_keras import sparsity as sparsity_lib
from hos_keras.criteria import get_criterion
from hos_keras.decompose import decompose
from hos_keras.errors import InvalidArgumentError, check_int
from hos_keras.latency import measure_latency
from hos_keras.plan import PruningPlan, plan_pruning
from hos_keras.profile import profile
from hos_keras.recalibration import batchnorm_layers, recalibrate_batchnorm
from hos_keras.sparsity import GroupSparsity
from hos_keras.text import plural
from hos_keras.training import check_inputs, many_models

__all__ = ["CompressionReport", "compress"]

STAGES = ("original", "sparse", "pruned", "recalibrated", "distilled", "finetuned")
# The layer statistic T each allocation reports (report.statistic_name()).
_STATISTIC_NAMES = {
    "shapiro": "Shapiro-Wilk W",
    "jarque_bera": "Jarque-Bera JB",
    "k34": "log10(1e13 |k3 k4|) / 21",
    "itpruner": "importance exp(-beta s)",
}
_STAGE_LABELS = {
    "original": "original",
    "sparse": "sparse",
    "pruned": "pruned",
    "recalibrated": "BN recal.",
    "distilled": "distilled",
    "finetuned": "fine-tuned",
}
# compress's approaches, the paper's A1, A2 and A3 (METHOD.md section 4).
APPROACHES = ("prune", "decompose", "prune+decompose")


@dataclasses.dataclass
class CompressionReport:
    """What `compress` did and measured.

    Attributes:
        model_name: Name of the original model.
        criterion: Filter criterion used (`"none"` without pruning).
        allocation: Allocation used (its name; `"none"` without pruning).
        metrics: Stage (`"original"`, `"sparse"` - after sparse training, before
            pruning -, `"pruned"` - right after pruning and/or
            decomposition -, `"recalibrated"` - then with its batch norms
            re-estimated -, `"distilled"`, `"finetuned"`) -> the `evaluate`
            results on the validation data (loss and every compiled metric); a
            stage that did not run is absent.
        params: `{"original": n, "slim": n}`.
        macs: `{"original": n, "slim": n}` (per sample, see `hos_keras.profile`).
        latency_ms: `{"original": {batch: ms}, "slim": {batch: ms}}`, time of
            one inference call in the TensorFlow runtime.
        file_bytes: `{"original": n, "slim": n}`, size of the `.keras` files of the
            uncompiled models (no optimizer state in either).
        tflite_latency_ms: `{"original": ms, "slim": ms}`, batch-1 time in
            the TFLite interpreter (2 threads); empty when not measured.
        layers: One dict per pruned channel group: name, channels, kept, ratio,
            statistic.
        pivots: Layers whose features were matched during distillation.
        history: `{"distill": ..., "finetune": ...}`, the `History.history` dicts.
        details: What the allocation reported (e.g. the coefficient a target
            search found and the reduction it achieved).
        plan: The `PruningPlan` (not part of `to_dict`; save it with
            `plan.to_json()`); `None` for `approach="decompose"`.
        approach: `"prune"`, `"decompose"` or `"prune+decompose"`.
        decomposition: `hos_keras.DecompositionReport.to_dict()` of the low-rank
            step (per-layer ranks, kernel and output errors, params and MACs), or
            `None` without one.
    """

    model_name: str
    criterion: str
    allocation: str
    metrics: dict[str, dict[str, float]]
    params: dict[str, int]
    macs: dict[str, int]
    latency_ms: dict[str, dict[int, float]]
    file_bytes: dict[str, int | None]
    layers: list[dict[str, Any]]
    pivots: list[str]
    history: dict[str, dict[str, list[float]]]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    tflite_latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    plan: PruningPlan | None = dataclasses.field(default=None, repr=False)
    approach: str = "prune"
    decomposition: dict[str, Any] | None = None

    def accuracy(self, stage: str) -> float | None:
        """The accuracy metric of a stage, or None if it was not measured.

        Args:
            stage: One of `"original"`, `"sparse"`, `"pruned"`,
                `"recalibrated"`, `"distilled"`, `"finetuned"`.

        Returns:
            The value of the first compiled metric whose name contains
            "accuracy", or None.

        Raises:
            InvalidArgumentError: for an unknown stage.
        """
        if stage not in STAGES:
            raise InvalidArgumentError(
                f"Received stage={stage!r}; pass one of {list(STAGES)}."
            )
        for key, value in self.metrics.get(stage, {}).items():
            if "accuracy" in key:
                return value
        return None

    def to_dict(self) -> dict:
        """A JSON-serializable dict of everything but the plan."""
        data = dataclasses.asdict(self)
        data.pop("plan")
        data["accuracy"] = {s: self.accuracy(s) for s in STAGES if s in self.metrics}
        data["latency_ms"] = {
            name: {str(b): v for b, v in by_batch.items()}
            for name, by_batch in self.latency_ms.items()
        }
        data["macs_reduction"] = 1.0 - self.macs["slim"] / max(self.macs["original"], 1)
        return data

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON (see `to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)

    def statistic_name(self) -> str | None:
        """What the layer statistic T of `layers` is, for this allocation."""
        name = self.allocation
        if name == "target":
            name = (self.plan.allocation_config if self.plan else {}).get("base")
        return _STATISTIC_NAMES.get(name)

    def layers_figure(self):
        """The matplotlib figure `plot` saves (see there)."""
        if not self.layers:
            raise InvalidArgumentError("The report has no pruned layers to plot.")
        pyplot = _pyplot()
        names = [layer["name"] for layer in self.layers]
        positions = np.arange(len(names))
        statistics = [layer["statistic"] for layer in self.layers]
        has_statistic = any(s is not None for s in statistics)
        rows = 2 if has_statistic else 1
        figure, axes = pyplot.subplots(
            rows,
            1,
            figsize=(max(6.0, 0.28 * len(names) + 2), 2.6 * rows + 1.4),
            sharex=True,
            squeeze=False,
        )
        axes = axes[:, 0]
        channels = [layer["channels"] for layer in self.layers]
        kept = [layer["kept"] for layer in self.layers]
        axes[0].bar(positions, channels, color="0.85", label="original")
        colors = ["C0" if k == c else "C3" for k, c in zip(kept, channels, strict=True)]
        axes[0].bar(positions, kept, color=colors, label="kept")
        axes[0].set_ylabel("channels (kept of original)")
        axes[0].legend(
            handles=[
                pyplot.Rectangle((0, 0), 1, 1, color="0.85", label="removed"),
                pyplot.Rectangle((0, 0), 1, 1, color="C3", label="kept (pruned)"),
                pyplot.Rectangle((0, 0), 1, 1, color="C0", label="kept (unpruned)"),
            ],
            fontsize=7,
            loc="upper left",
        )
        reduction = 1.0 - self.macs["slim"] / max(self.macs["original"], 1)
        axes[0].set_title(
            f"{self.model_name}: criterion {self.criterion}, allocation "
            f"{self.allocation}, {reduction:.0%} fewer MACs"
        )
        if has_statistic:
            values = [np.nan if v is None else v for v in statistics]
            axes[1].plot(positions, values, "o-", color="C0")
            label = self.statistic_name() or "layer statistic"
            axes[1].set_ylabel(f"T: {label}", fontsize=8)
        axes[-1].set_xticks(positions)
        axes[-1].set_xticklabels(names, rotation=90, fontsize=7)
        figure.tight_layout()
        return figure

    def plot(self, path: str) -> None:
        """Saves a PNG of the channels kept per layer and the layer statistics.

        Top: every channel group's original channels (grey) and the channels
        kept, in network order; groups left whole are drawn in another colour,
        so that a ratio of 0 is visible. Bottom: the layer statistic T the
        allocation used (e.g. Shapiro-Wilk W), where it has one, named.

        Args:
            path: Output file, e.g. `"layers.png"`.

        Raises:
            InvalidArgumentError: if the report has no layers.
        """
        _save(self.layers_figure(), path)

    def stages_figure(self):
        """The matplotlib figure `plot_stages` saves (see there)."""
        pyplot = _pyplot()
        stages = [s for s in STAGES if s in self.metrics]
        accuracy = [self.accuracy(s) for s in stages]
        ratios = {"MACs": self.macs, "params": self.params}
        for batch, label in ((1, "TF latency b1"), (32, "TF latency b32")):
            if batch in self.latency_ms.get("original", {}):
                ratios[label] = {k: self.latency_ms[k][batch] for k in self.latency_ms}
        if self.tflite_latency_ms:
            ratios["TFLite latency b1"] = self.tflite_latency_ms
        figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 3.6))
        left.bar(
            range(len(stages)),
            [np.nan if a is None else a for a in accuracy],
            color=["0.6"] + ["C0"] * (len(stages) - 1),
        )
        for i, value in enumerate(accuracy):
            if value is not None:
                left.text(
                    i, value, f"{value:.4f}", ha="center", va="bottom", fontsize=7
                )
        left.set_xticks(range(len(stages)))
        left.set_xticklabels([_STAGE_LABELS[s] for s in stages], fontsize=7)
        left.set_ylabel("validation accuracy")
        left.set_ylim(0, 1.05)
        left.set_title("accuracy at each stage")
        names = list(ratios)
        values = [ratios[n]["original"] / max(ratios[n]["slim"], 1e-12) for n in names]
        right.barh(range(len(names)), values, color="C2")
        for i, value in enumerate(values):
            right.text(value, i, f" {value:.2f}x", va="center", fontsize=7)
        right.set_yticks(range(len(names)))
        right.set_yticklabels(names, fontsize=8)
        right.axvline(1.0, color="0.5", linewidth=0.8)
        right.set_xlabel("original / slim")
        right.set_title("smaller and faster by")
        figure.suptitle(f"{self.model_name}: {self.approach}", fontsize=9)
        figure.tight_layout()
        return figure

    def plot_stages(self, path: str) -> None:
        """Saves a PNG of the accuracy at each stage (original, after pruning,
        recalibration, distillation, fine-tuning: those that ran) beside the
        MACs, parameter and latency ratios of original to slim.

        Args:
            path: Output file, e.g. `"stages.png"`.
        """
        _save(self.stages_figure(), path)

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Prints the before/after table, the accuracy per stage and the layers.

        Args:
            print_fn: Function called with each line. Defaults to `print`.
        """
        print_fn = print_fn or print
        rows = [("params", self.params), ("MACs", self.macs)]
        for batch in sorted(self.latency_ms.get("original", {})):
            rows.append(
                (
                    f"latency b{batch} (ms)",
                    {k: self.latency_ms[k][batch] for k in ("original", "slim")},
                )
            )
        if self.tflite_latency_ms:
            rows.append(("TFLite latency b1 (ms)", self.tflite_latency_ms))
        rows.append((".keras file (bytes)", self.file_bytes))
        header = f"{'':<22}{'original':>14}{'slim':>14}{'ratio':>9}"
        how = []
        if self.approach != "decompose":
            how.append(f"criterion={self.criterion}, allocation={self.allocation}")
        if self.decomposition is not None:
            how.append(
                f"decomposition={self.decomposition['method']} (factor "
                f"{self.decomposition['factor']:g})"
            )
        print_fn(f"Compression of {self.model_name!r}: {', '.join(how)}")
        print_fn("-" * len(header))
        print_fn(header)
        print_fn("-" * len(header))
        for label, values in rows:
            before, after = values.get("original"), values.get("slim")
            ratio = f"{before / after:.2f}x" if before and after else "-"
            print_fn(f"{label:<22}{_fmt(before):>14}{_fmt(after):>14}{ratio:>9}")
        print_fn("-" * len(header))
        stages = {
            "original": "original",
            "sparse": "after sparse training",
            "pruned": {
                "prune": "right after pruning",
                "decompose": "right after decomposition",
                "prune+decompose": "right after both",
            }[self.approach],
            "recalibrated": "+ BN recalibration",
            "distilled": "after distillation",
            "finetuned": "after fine-tuning",
        }
        for stage, label in stages.items():
            if stage in self.metrics:
                value = self.accuracy(stage)
                shown = "-" if value is None else f"{value:.4f}"
                loss = self.metrics[stage].get("loss")
                extra = "" if loss is None else f"  (loss {loss:.4f})"
                print_fn(f"accuracy {label:<22}{shown:>10}{extra}")
        print_fn("-" * len(header))
        if self.decomposition is not None:
            self._decomposition_table(print_fn)
        if not self.layers:
            return
        width = max([len("layer")] + [len(layer["name"]) for layer in self.layers])
        print_fn(
            f"{'layer':<{width + 2}}{'channels':>9}{'kept':>7}{'ratio':>7}{'T':>10}"
        )
        for layer in self.layers:
            statistic = layer["statistic"]
            shown = "-" if statistic is None else f"{statistic:.4g}"
            print_fn(
                f"{layer['name']:<{width + 2}}{layer['channels']:>9}"
                f"{layer['kept']:>7}{layer['ratio']:>7.2f}{shown:>10}"
            )

    def _decomposition_table(self, print_fn) -> None:
        layers = self.decomposition["layers"]
        width = max([len("decomposed layer")] + [len(n) for n in layers])
        print_fn(
            f"{'decomposed layer':<{width + 2}}{'ranks':>10}{'kernel err':>12}"
            f"{'params':>10}{'->':>4}{'':>8}"
        )
        for name, entry in layers.items():
            ranks = "x".join(str(r) for r in entry["ranks"])
            params = entry["params"]
            print_fn(
                f"{name:<{width + 2}}{ranks:>10}{entry['kernel_error']:>12.4f}"
                f"{params['original']:>10,}{'->':>4}{params['decomposed']:>8,}"
            )
        print_fn("-" * (width + 44))


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return f"{value:,}"


def _is_arrays(data) -> bool:
    return isinstance(data, tuple) and not isinstance(data[0], tf.data.Dataset)


def _data_kwargs(data, batch_size: int | None) -> dict:
    """Keyword arguments of fit/evaluate for a dataset or an (x, y[, w]) tuple."""
    if _is_arrays(data):
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


def _train_kwargs(data, batch_size: int) -> dict:
    """`_data_kwargs` for fit: datasets are shuffled by their own pipeline."""
    kwargs = _data_kwargs(data, batch_size)
    kwargs["shuffle"] = _is_arrays(data)
    return kwargs


def _first_inputs(data):
    """The inputs of the first batch of `data`, as numpy arrays."""
    if _is_arrays(data):
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


def _pyplot():
    """matplotlib's pyplot, on the file-only Agg backend unless one is chosen."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot

    return pyplot


def _save(figure, path: str) -> None:
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)


def _check_data(name: str, data) -> None:
    if data is None:
        raise InvalidArgumentError(
            f"Received {name}=None; pass (x, y) arrays, a batched tf.data.Dataset "
            "or a keras PyDataset."
        )
    if _is_arrays(data):
        _data_kwargs(data, 1)
    elif not isinstance(data, (tf.data.Dataset, keras.utils.PyDataset)):
        raise InvalidArgumentError(
            f"Received {name} of type {type(data).__name__}; pass (x, y) arrays, a "
            "batched tf.data.Dataset or a keras PyDataset."
        )


def _file_bytes(model: keras.Model, path: str) -> int | None:
    try:
        model.save(path)
    except (ValueError, TypeError, NotImplementedError, OSError) as error:
        warnings.warn(
            f"Could not save {model.name!r} as .keras ({type(error).__name__}: "
            f"{error}); its file size is not reported.",
            stacklevel=3,
        )
        return None
    return os.path.getsize(path)


def evaluate_model(
    model: keras.Model, data, loss, metrics, *, batch_size=None, verbose=0
) -> dict[str, float]:
    """`evaluate` results of a model, without compiling the model itself.

    A functional view sharing the layers is compiled instead, so the model keeps
    no compile state (its .keras file holds no optimizer).
    """
    view = keras.Model(model.inputs, model.outputs, name=model.name)
    view.compile(loss=loss, metrics=metrics)
    values = view.evaluate(
        **_data_kwargs(data, batch_size), return_dict=True, verbose=verbose
    )
    return {k: float(v) for k, v in values.items()}


def _outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model's (first) output is already a softmax."""
    output = model.outputs[0]
    producers = [
        node.operation
        for node in graph.functional_nodes(model)
        if any(t is output for t in node.output_tensors)
    ]
    if not producers:
        return False
    layer = producers[0]
    if isinstance(layer, keras.layers.Softmax):
        return True
    return getattr(layer, "activation", None) is keras.activations.softmax


def _fresh_optimizer(identifier, default: Callable[[], keras.optimizers.Optimizer]):
    """A new optimizer: from a name, a config dict, or a copy of an instance."""
    if identifier is None:
        return default()
    if isinstance(identifier, keras.optimizers.Optimizer):
        return keras.optimizers.deserialize(keras.optimizers.serialize(identifier))
    return keras.optimizers.get(identifier)


def _sparsity(sparse, criterion, scope, skip, seed, data, steps) -> GroupSparsity:
    """compress's `GroupSparsity` from its `sparse` argument (`None`: the
    defaults, with this call's criterion, scope, skip and training data)."""
    options = {"criterion": criterion, "scope": scope, "skip": skip, "seed": seed}
    if getattr(get_criterion(criterion, seed=seed), "statistics", ()):
        options.update(data=data, calibration_steps=steps)
    return sparsity_lib.from_argument(True if sparse is None else sparse, **options)


def _sparse_trained(
    model, train_data, epochs, sparsity, optimizer, loss, metrics, batch_size, verbose
) -> keras.Model:
    """A copy of `model` after `epochs` of sparse training (see `GroupSparsity`)."""
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.compile(
        optimizer=_fresh_optimizer(
            optimizer,
            lambda: keras.optimizers.SGD(1e-2, momentum=0.9, nesterov=True),
        ),
        loss=loss,
        metrics=metrics,
    )
    if verbose:
        print(
            f"[hos_keras] sparse training: {epochs} epoch{'s' * (epochs != 1)} "
            f"({sparsity.method}, strength {sparsity.strength:g})"
        )
    copy.fit(
        **_train_kwargs(train_data, batch_size),
        epochs=epochs,
        callbacks=[sparsity],
        verbose=verbose,
    )
    return copy


def _check_lr_schedule(name: str, schedule):
    """A `*_lr_schedule` argument of `compress`, checked.

    Returns None, the `LearningRateSchedule` itself, or a checked version of the
    epoch function in the `(epoch, lr)` form `LearningRateScheduler` calls.
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


def _scheduled(optimizer: keras.optimizers.Optimizer, schedule):
    """`optimizer` rebuilt with `schedule` as its learning rate, and the callbacks
    that apply it (a `LearningRateScheduler` for an epoch function)."""
    if schedule is None:
        return optimizer, []
    config = optimizer.get_config()
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        config["learning_rate"] = schedule
        return type(optimizer).from_config(config), []
    config["learning_rate"] = schedule(0)
    scheduler = keras.callbacks.LearningRateScheduler(schedule)
    return type(optimizer).from_config(config), [scheduler]


def _resolve_allocation(allocation, target, options, target_latency=None):
    if target is not None and target_latency is not None:
        raise InvalidArgumentError(
            f"Received target={target!r} and target_latency={target_latency!r}; "
            "pass one: a share of MACs or a share of latency to remove."
        )
    if target is None and target_latency is None:
        return allocation, options
    name, value, reduction = (
        ("target", target, {"macs_reduction": target})
        if target is not None
        else ("target_latency", target_latency, {"latency_reduction": target_latency})
    )
    if allocation == "itpruner":  # it allocates for its own target
        return allocation, {**options, **reduction}
    if not isinstance(allocation, str) or allocation == "target":
        raise InvalidArgumentError(
            f"Received {name}={value!r} with allocation={allocation!r}; with a "
            "target pass the base allocation by name (e.g. allocation='shapiro'), "
            "or pass allocation='target' with macs_reduction= instead of target."
        )
    return allocation_lib.TargetAllocation(base=allocation, **reduction, **options), {}


@many_models
def compress(
    model: keras.Model,
    train_data,
    val_data,
    *,
    approach: str = "prune",
    target: float | None = None,
    target_latency: float | None = None,
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
    seed: int | None = 0,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    latency_batch_sizes: Sequence[int] = (1, 32),
    latency_runs: int = 20,
    tflite_latency: bool = True,
    output_dir: str | None = None,
    verbose: int = 1,
    **allocation_options,
) -> tuple[keras.Model, CompressionReport]:
    """Prunes and/or decomposes, distills and fine-tunes a model; reports both.

    1. Compresses the model by `approach`, the paper's three (METHOD.md section
       4): `"prune"` (A1) plans the pruning on the model's weights
       (`plan_pruning`: criterion, allocation or a MACs or latency target) and
       slims it (`slim_model`); `"decompose"` (A2) replaces its convs by low-rank
       factorizations (`hos_keras.decompose`); `"prune+decompose"` (A3) prunes,
       then decomposes the slim model.
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
        approach: `"prune"`, `"decompose"` or `"prune+decompose"` (see above).
            With `"decompose"` the pruning arguments (`target`, `target_latency`,
            `scope`, `skip`, allocation options) are refused. Defaults to
            `"prune"`.
        target: Fraction of MACs to remove, in (0, 1): the coefficient of
            `allocation` is searched to reach it (see `TargetAllocation`).
            Defaults to `None` (use `allocation` with its own options).
        target_latency: Fraction of the latency on `runtime` to remove, in (0, 1)
            (`0.5`: 2x faster): the coefficient of `allocation` is searched until
            the predicted latency (`hos_keras.latency`) meets it, and the plan
            records the measured speed-up. Give this or `target`. Defaults to
            `None`.
        runtime: Runtime of `target_latency`: `"tflite"` or `"tf"`. Defaults to
            `"tflite"`.
        latency_model: A ready latency model of `model` for `target_latency`
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
        pivots: `"auto"`, layer names or `None` (see `HOSDistiller`). With `"auto"`
            on a model with too few residual blocks or downsampling stages there
            are no pivot losses (a message says so). Defaults to `"auto"`.
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
        seed: Seed for randomized criteria. Defaults to `0`.
        callbacks: Extra Keras callbacks for both training stages.
        latency_batch_sizes: Batch sizes of the latency measurement. Defaults to
            `(1, 32)`; `()` skips it.
        latency_runs: Timed calls per model and batch size. Defaults to `20`.
        tflite_latency: Also time both models at batch 1 in the TFLite interpreter
            (single-input models; a conversion failure gives a warning and no
            figure). Defaults to `True`.
        output_dir: If given, `slim.keras`, `plan.json` and `report.json` are
            written there. Defaults to `None`.
        verbose: `0` silent, `1` progress bars, `2` one line per epoch. Defaults
            to `1`.
        **allocation_options: Options of the allocation, e.g. `coefficient=3.7`.

    Returns:
        `(slim_model, report)`: the trained slim model (not compiled) and a
        `CompressionReport`.

    Raises:
        InvalidArgumentError: for missing or malformed data, negative epochs, a
            target together with an allocation instance, bad allocation
            options, or a learning-rate schedule that is not callable or gives
            a rate that is not a finite number >= 0.
        NothingToPruneError: if the model has no prunable channels.
        UnsupportedModelError: for subclassed or unbuilt models.

    Example:

    ```python
    slim, report = hos_keras.compress(model, (x_train, y_train), (x_test, y_test),
                                      target=0.5, distill_epochs=10,
                                      finetune_epochs=2, verbose=0)
    report.summary()  # compress prints it itself with verbose=1
    slim.save("slim.keras")
    ```
    """
    _check_data("train_data", train_data)
    _check_data("val_data", val_data)
    check_inputs(model, train_data, "train_data")
    check_inputs(model, val_data, "val_data")
    distill_epochs = check_int("distill_epochs", distill_epochs, minimum=0)
    finetune_epochs = check_int("finetune_epochs", finetune_epochs, minimum=0)
    recalibration_steps = check_int(
        "recalibration_steps", recalibration_steps, minimum=0
    )
    sparse_epochs = check_int("sparse_epochs", sparse_epochs, minimum=0)
    schedules = {
        "distill": _check_lr_schedule("distill_lr_schedule", distill_lr_schedule),
        "finetune": _check_lr_schedule("finetune_lr_schedule", finetune_lr_schedule),
    }
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
    pruning = {
        "target": target,
        "target_latency": target_latency,
        "scope": None if scope == "all" else scope,
        "skip": skip or None,
        "sparse_epochs": sparse_epochs or None,
        **allocation_options,
    }
    given = [f"{k}={v!r}" for k, v in pruning.items() if v is not None]
    if approach == "decompose" and given:
        raise InvalidArgumentError(
            f"Received approach='decompose' with {', '.join(given)}, which only "
            "pruning uses; pass approach='prune+decompose' to prune as well."
        )
    say = print if verbose else (lambda *_: None)
    probabilities = _outputs_probabilities(model)
    if loss is None:
        loss = getattr(
            model, "loss", None
        ) or keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    metrics = list(metrics)
    plan = None
    pruned_from = model  # the model the plan is made for and slimmed
    if sparse_epochs:
        pruned_from = _sparse_trained(
            model,
            train_data,
            sparse_epochs,
            sparsity=_sparsity(
                sparse, criterion, scope, skip, seed, train_data, calibration_steps
            ),
            optimizer=sparse_optimizer,
            loss=loss,
            metrics=metrics,
            batch_size=batch_size,
            verbose=verbose,
        )
    if approach != "decompose":
        allocator, options = _resolve_allocation(
            allocation, target, allocation_options, target_latency
        )
        calibration = {}
        resolved = (
            allocation_lib.get_allocation(allocator, **options)
            if isinstance(allocator, str)
            else allocator
        )
        if getattr(get_criterion(criterion, seed=seed), "statistics", ()) or getattr(
            resolved, "needs_data", False
        ):
            calibration = {"data": train_data, "calibration_steps": calibration_steps}
        plan = plan_pruning(
            pruned_from,
            criterion,
            allocator,
            **calibration,
            min_channels=min_channels,
            round_to=round_to,
            seed=seed,
            scope=scope,
            skip=skip,
            runtime=runtime,
            latency_model=latency_model,
            **options,
        )
        say(
            f"[hos_keras] plan: {plural(len(plan.groups), 'channel group')}, MACs "
            f"{plan.macs_before:,} -> {plan.macs_after:,} "
            f"({plan.macs_reduction:.1%} fewer)"
        )
    if probabilities and output_loss == "softmax_mse":
        output_loss = "logits_mse"  # the outputs are probabilities already

    # A copy rebuilt from the config: unlike clone_model it carries no compile
    # state, so its .keras file holds no optimizer slots.
    teacher = type(model).from_config(model.get_config())
    teacher.set_weights(model.get_weights())
    student = model if plan is None else surgery.slim_model(pruned_from, plan)
    decomposition = None
    if approach != "prune":
        student, decomposed = decompose(
            student,
            decompose_method,
            decompose_factor,
            decompose_ranks,
            decompose_layers,
            data=keras.tree.map_structure(lambda a: a[:32], _first_inputs(val_data)),
            return_report=True,
            seed=seed or 0,
        )
        decomposition = decomposed.to_dict()
        say(
            f"[hos_keras] decomposed {plural(len(decomposed.layers), 'layer')} "
            f"({decompose_method}), MACs {decomposed.macs['original']:,} -> "
            f"{decomposed.macs['decomposed']:,}"
        )

    def evaluate(net, stage):
        say(f"[hos_keras] evaluating: {stage}")
        return evaluate_model(
            net, val_data, loss, metrics, batch_size=batch_size, verbose=verbose
        )

    results = {"original": evaluate(teacher, "original")}
    if pruned_from is not model:
        results["sparse"] = evaluate(pruned_from, "after sparse training")
    results["pruned"] = evaluate(
        student,
        "right after "
        + {"prune": "pruning", "decompose": "decomposition"}.get(
            approach, "pruning and decomposition"
        ),
    )
    if recalibration_steps and batchnorm_layers(student):
        say(
            "[hos_keras] re-estimating batch norms on "
            f"{plural(recalibration_steps, 'batch', 'batches')}"
        )
        recalibrate_batchnorm(
            student,
            train_data,
            recalibration_steps,
            batch_size=batch_size,
        )
        results["recalibrated"] = evaluate(student, "after BN recalibration")

    if pivots == "auto":
        try:
            pivots = distill.auto_pivots(student, n_pivots)
        except InvalidArgumentError:
            say(
                f"[hos_keras] {model.name!r} has too few residual blocks or "
                f"downsampling stages for {n_pivots} pivots: distilling with the "
                "output loss only (pass pivots=[...] to match intermediate layers)."
            )
            pivots = []
    distiller = distill.HOSDistiller(
        student,
        teacher,
        plan=plan,
        pivots=pivots,
        output_loss=output_loss,
        output_weight=output_weight,
        decay=decay,
    )
    history = {}
    fit_kwargs = _train_kwargs(train_data, batch_size)
    for stage, key, label, auxiliary, epochs, optimizer, default in (
        ("distill", "distilled", "distillation", True, distill_epochs,
         distill_optimizer, 1e-3),
        ("finetune", "finetuned", "fine-tuning", False, finetune_epochs,
         finetune_optimizer, 1e-4),
    ):  # fmt: skip
        if not epochs:
            continue
        distiller.set_auxiliary(auxiliary)
        optimizer, schedulers = _scheduled(
            _fresh_optimizer(
                optimizer,
                lambda lr=default: keras.optimizers.SGD(
                    lr, momentum=0.9, nesterov=True
                ),
            ),
            schedules[stage],
        )
        distiller.compile(optimizer=optimizer, loss=loss, metrics=metrics)
        say(
            f"[hos_keras] {stage}: {plural(epochs, 'epoch')} "
            f"{'with' if auxiliary else 'without'} the auxiliary losses"
        )
        run = distiller.fit(
            **fit_kwargs,
            validation_data=val_data,
            epochs=epochs,
            callbacks=[*schedulers, *(callbacks or [])],
            verbose=verbose,
        )
        history[stage] = {k: [float(v) for v in vs] for k, vs in run.history.items()}
        results[key] = evaluate(student, f"after {label}")

    before, after = profile(model), profile(student)
    sample = _first_inputs(val_data)
    latency = {}
    if latency_batch_sizes:
        say("[hos_keras] measuring latency")
        latency = measure_latency(
            {"original": model, "slim": student},
            sample,
            latency_batch_sizes,
            runs=latency_runs,
        )
    tflite = {}
    if tflite_latency and latency_runs and len(model.inputs) == 1:
        say("[hos_keras] measuring TFLite latency")
        try:
            tflite = latency_lib.tflite_latency(
                {"original": teacher, "slim": student},
                keras.tree.flatten(sample)[0],
                runs=latency_runs,
            )
        except Exception as error:  # noqa: BLE001 - the converter raises many kinds
            warnings.warn(
                f"TFLite latency not measured: conversion failed "
                f"({type(error).__name__}: {' '.join(str(error).split())[:200]}).",
                stacklevel=2,
            )
    with tempfile.TemporaryDirectory() as scratch:
        sizes = {
            "original": _file_bytes(teacher, os.path.join(scratch, "original.keras")),
            "slim": _file_bytes(
                student,
                os.path.join(output_dir or scratch, "slim.keras"),
            ),
        }
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
        layers=[
            {
                "name": g.name,
                "channels": g.channels,
                "kept": len(g.keep),
                "ratio": float(g.ratio),
                "statistic": None if g.statistic is None else float(g.statistic),
            }
            for g in (plan.groups.values() if plan is not None else ())
        ],
        pivots=list(pivots or []),
        history=history,
        details={} if plan is None else dict(plan.details),
        plan=plan,
        approach=approach,
        decomposition=decomposition,
    )
    if output_dir is not None and plan is not None:
        with open(os.path.join(output_dir, "plan.json"), "w", encoding="utf-8") as f:
            f.write(plan.to_json())
    if output_dir is not None:
        with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
            f.write(report.to_json())
    if verbose:
        report.summary()
    return student, report
