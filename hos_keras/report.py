"""What `compress` reports, and the one table printer of the library.

`CompressionReport` holds the accuracy at each stage of `compress` and the
before/after costs; `table` lays out every table hos_keras prints (the
compression summary, `PruningPlan.summary` and the `hos-keras` command's).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from hos_keras import files
from hos_keras.errors import InvalidArgumentError
from hos_keras.text import allocation_label, statistic_cell, table

if TYPE_CHECKING:
    from hos_keras.plan_record import PruningPlan

__all__ = ["STAGES", "CompressionReport", "file_sizes", "plan_layers", "table"]


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

    def allocation_label(self) -> str:
        """The allocation, with the base a target searched (`allocation_label`)."""
        return allocation_label(
            self.allocation, self.plan.allocation_config if self.plan else None
        )

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
            f"{self.allocation_label()}, {reduction:.0%} fewer MACs"
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
        how = []
        if self.approach != "decompose":
            how.append(
                f"criterion={self.criterion}, allocation={self.allocation_label()}"
            )
        if self.decomposition is not None:
            how.append(
                f"decomposition={self.decomposition['method']} (factor "
                f"{self.decomposition['factor']:g})"
            )
        print_fn(f"Compression of {self.model_name!r}: {', '.join(how)}")
        costs = [("params", self.params), ("MACs", self.macs)]
        for batch in sorted(self.latency_ms.get("original", {})):
            costs.append(
                (
                    f"latency b{batch} (ms)",
                    {k: self.latency_ms[k][batch] for k in ("original", "slim")},
                )
            )
        if self.tflite_latency_ms:
            costs.append(("TFLite latency b1 (ms)", self.tflite_latency_ms))
        costs.append((".keras file (bytes)", self.file_bytes))
        rows = []
        for label, values in costs:
            before, after = values.get("original"), values.get("slim")
            ratio = f"{before / after:.2f}x" if before and after else None
            rows.append(
                (label, *(f"{v:.3f}" if isinstance(v, float) else v
                          for v in (before, after)), ratio)
            )  # fmt: skip
        for line in table(("", "original", "slim", "ratio"), rows):
            print_fn(line)
        labels = {
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
        stages = []
        for stage, label in labels.items():
            if stage in self.metrics:
                value, loss = self.accuracy(stage), self.metrics[stage].get("loss")
                stages.append(
                    (
                        label,
                        None if value is None else f"{value:.4f}",
                        None if loss is None else f"{loss:.4f}",
                    )
                )
        print_fn("")
        for line in table(("stage", "accuracy", "loss"), stages):
            print_fn(line)
        if self.decomposition is not None:
            print_fn("")
            rows = [
                (
                    name,
                    "x".join(str(r) for r in entry["ranks"]),
                    f"{entry['kernel_error']:.4f}",
                    entry["params"]["original"],
                    entry["params"]["decomposed"],
                )
                for name, entry in self.decomposition["layers"].items()
            ]
            headers = ("decomposed layer", "ranks", "kernel err", "params", "after")
            for line in table(headers, rows):
                print_fn(line)
        if self.layers:
            print_fn("")
            rows = [
                (
                    layer["name"],
                    layer["channels"],
                    layer["kept"],
                    f"{layer['ratio']:.2f}",
                    statistic_cell(layer["statistic"]),
                )
                for layer in self.layers
            ]
            for line in table(("layer", "channels", "kept", "ratio", "T"), rows):
                print_fn(line)


def _pyplot():
    """matplotlib's pyplot, on the file-only Agg backend unless one is chosen."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot

    return pyplot


def _save(figure, path: str) -> None:
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110)
    _pyplot().close(figure)


def plan_layers(plan: PruningPlan | None) -> list[dict[str, Any]]:
    """The report's `layers`: one dict per channel group of `plan` (none for
    `None`)."""
    return [
        {
            "name": g.name,
            "channels": g.channels,
            "kept": len(g.keep),
            "ratio": float(g.ratio),
            "statistic": None if g.statistic is None else float(g.statistic),
        }
        for g in (plan.groups.values() if plan is not None else ())
    ]


def _file_bytes(model: keras.Model, path: str) -> int | None:
    try:
        model.save(path)
    except (ValueError, TypeError, NotImplementedError, OSError) as error:
        warnings.warn(
            f"Could not save {model.name!r} as .keras ({type(error).__name__}: "
            f"{error}); its file size is not reported.",
            stacklevel=4,
        )
        return None
    return os.path.getsize(path)


def file_sizes(
    original: keras.Model, slim: keras.Model, output_dir: str | None = None
) -> dict[str, int | None]:
    """`{"original": bytes, "slim": bytes}` of both models' `.keras` files (None
    for a model that cannot be saved, with a warning); the slim one is kept as
    `output_dir/slim.keras` when `output_dir` is given."""
    with tempfile.TemporaryDirectory() as scratch:
        return {
            "original": _file_bytes(original, os.path.join(scratch, "original.keras")),
            "slim": _file_bytes(
                slim, os.path.join(output_dir or scratch, "slim.keras")
            ),
        }
