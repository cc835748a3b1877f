"""Latency: measured inference time, and a latency model for planning against it.

Half the MACs does not buy half the time: on small networks a runtime spends much
of its time on a fixed cost per op, and kernels favour some channel counts. This
module owns every latency measurement in hos_keras:

- `measure_latency`: time of several models in the TensorFlow runtime, taking
  turns so that machine noise hits them alike, and kept as the fastest decile of
  the calls (`_typical`): what the runtime does when nothing disturbs it, and
  several times steadier between runs than the median on a shared machine;
- `tflite_latency`: the same in the TFLite interpreter (XNNPACK, given threads);
- `LatencyModel`: the predicted latency of a model's pruned variants on one runtime.
  `build_latency_model` times the whole model once, then each weight layer alone
  (a one-layer model per distinct layer, at a few sampled widths), and fits per
  layer `ms = a + b * c_in * c_out + c * c_in + d * c_out`; element-wise merges
  (residual adds, squeeze-excitation products) get a cost per element. A pruned
  variant is predicted as the measured whole-model time minus what each layer
  saves, so the fixed costs the layer timings cannot see stay in. The model is
  cached to a JSON file keyed by the architecture, runtime, batch size, threads and
  machine, so a second plan of the same model is instant.

This is the measured-latency planning of NetAdapt (Yang et al., ECCV 2018) and
HALP (Shen et al., NeurIPS 2022), with per-layer tables fitted rather than looked
up, so that any width can be asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hos_keras import cost_model, export, files, graph, layer_rules, surgery
from hos_keras.errors import InvalidArgumentError, check_int
from hos_keras.plan_record import GroupPlan, PruningPlan

__all__ = [
    "RUNTIMES",
    "LatencyModel",
    "build_latency_model",
    "default_cache_dir",
    "measure_latency",
    "measure_tile",
    "tflite_latency",
]

RUNTIMES = ("tflite", "tf")
_FORMAT = "hos_keras.LatencyModel"
_VERSION = 3
# Width fractions (c_in, c_out) at which each layer is timed.
_SAMPLES = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.5), (0.25, 0.25))
# Uniform ratios of the pruned copies that calibrate the per-layer timings.
_CALIBRATION_RATIOS = (0.25, 0.5, 0.75)


def measure_latency(
    models: Mapping[str, keras.Model],
    sample,
    batch_sizes: Sequence[int] = (1, 32),
    runs: int = 20,
    warmup: int = 3,
) -> dict[str, dict[int, float]]:
    """Inference time of several models in the TensorFlow runtime.

    Each model runs as a `tf.function` in inference mode. The models take turns
    within every batch size, so machine noise affects them alike and their ratio
    is meaningful even on a busy machine.

    Args:
        models: Name -> model; all must accept `sample`.
        sample: One input (nested structure of arrays with a batch axis); its
            first example is tiled to each batch size.
        batch_sizes: Batch sizes to time. Defaults to `(1, 32)`.
        runs: Timed calls per model and batch size. Defaults to `20`.
        warmup: Untimed calls first (tracing). Defaults to `3`.

    Returns:
        Name -> {batch size: milliseconds per call (the fastest decile's bound,
        see the module docstring)}.

    Raises:
        InvalidArgumentError: for a non-positive batch size or run count.

    Example:

    ```python
    times = hos_keras.measure_latency({"big": model, "slim": slim}, x_val[:1])
    print(times["big"][1] / times["slim"][1])
    ```
    """
    if int(runs) < 1 or any(int(b) < 1 for b in batch_sizes):
        raise InvalidArgumentError(
            f"Received runs={runs!r}, batch_sizes={list(batch_sizes)!r}; pass "
            "positive integers."
        )
    functions = {
        name: tf.function(lambda x, m=model: m(x, training=False))
        for name, model in models.items()
    }
    result: dict[str, dict[int, float]] = {name: {} for name in models}
    for batch in batch_sizes:
        x = keras.tree.map_structure(
            lambda t, b=int(batch): tf.constant(
                np.repeat(np.asarray(t)[:1], b, axis=0)
            ),
            sample,
        )
        calls = {
            name: lambda fn=fn, x=x: keras.tree.map_structure(np.asarray, fn(x))
            for name, fn in functions.items()
        }
        for call in calls.values():
            for _ in range(warmup):
                call()
        for name, ms in _take_turns(calls, int(runs)).items():
            result[name][int(batch)] = ms
    return result


def tflite_latency(
    models: Mapping[str, keras.Model],
    sample=None,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 2,
) -> dict[str, float]:
    """Batch-1 inference time of several models in the TFLite interpreter.

    The models are converted (float32, XNNPACK as the interpreter's default
    delegate) and take turns, as in `measure_latency`.

    Args:
        models: Name -> single-input model.
        sample: An input batch whose first example is used; `None` for random
            normal values of the model's input shape. Defaults to `None`.
        runs: Timed calls per model. Defaults to `20`.
        warmup: Untimed calls first. Defaults to `3`.
        threads: Interpreter threads. Defaults to `2`.

    Returns:
        Name -> milliseconds per call.
    """
    interpreters = {}
    for name, model in models.items():
        runner = export.interpreter(export.timing_flatbuffer(model), threads)
        detail = runner.get_input_details()[0]
        if sample is None:
            x = np.random.default_rng(0).normal(size=detail["shape"])
        else:
            x = np.asarray(sample)[:1]
        runner.set_tensor(detail["index"], x.astype(detail["dtype"]))
        for _ in range(warmup):
            runner.invoke()
        interpreters[name] = runner
    return _take_turns({n: r.invoke for n, r in interpreters.items()}, int(runs))


# Timed calls a model makes in a row on its turn, after one untimed call.
_BLOCK = 5


def _take_turns(calls: Mapping[str, Callable[[], Any]], runs: int) -> dict:
    """Milliseconds per call of each function, `runs` timed calls each.

    The functions take turns in blocks: one untimed call brings the model's
    weights back into the caches, then `_BLOCK` timed calls. Turns spread machine
    noise over every model alike; blocks measure the steady state of a model
    called again and again. One call each per turn measures cold caches: nine
    CIFAR ResNet-56 variants timed that way read 1.89x for a plan measured 2.15x
    beside the original alone; timed in blocks, 2.13x and 2.09x.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, math.ceil(runs / _BLOCK))):
        for name, call in calls.items():
            call()
            for _ in range(_BLOCK):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: _typical(t) for name, t in times.items()}


def _typical(seconds) -> float:
    """Milliseconds of a call, as the 10th percentile of the timed calls.

    On a shared machine the slow calls are the ones something else interrupted;
    measured on CIFAR ResNet-56 in TFLite, four repeats of the same pair of models
    gave speed-ups 1.72-1.84x by the median and 1.83-1.86x by this percentile.
    """
    return 1000.0 * float(np.percentile(seconds, 10))


def _time_models(models, runtime, batch_size, threads, runs) -> list[float]:
    """Milliseconds per call of each model (random input), taking turns (in the
    TensorFlow runtime, models of the same input shape take turns)."""
    named = {str(i): m for i, m in enumerate(models)}
    if runtime == "tflite":
        result = tflite_latency(named, None, runs=runs, threads=threads)
        return [result[str(i)] for i in range(len(models))]
    by_shape: dict[tuple, dict] = {}
    for name, model in named.items():
        by_shape.setdefault(tuple(model.inputs[0].shape[1:]), {})[name] = model
    result = {}
    for shape, group in by_shape.items():
        x = np.random.default_rng(0).normal(size=(1, *shape)).astype("float32")
        for name, times in measure_latency(group, x, (batch_size,), runs).items():
            result[name] = times[batch_size]
    return [result[str(i)] for i in range(len(models))]


# The latency model -------------------------------------------------------------


@dataclasses.dataclass
class LatencyModel:
    """Predicted latency of a model's pruned variants on one runtime.

    Attributes:
        key: Cache key (architecture, runtime, batch size, threads, machine).
        runtime: `"tflite"` or `"tf"`.
        batch_size: Batch size of the timings (1 for TFLite).
        threads: TFLite interpreter threads.
        base_ms: Measured time of the whole, unpruned model.
        layers: Per weight layer: its `c_in`, `c_out`, `passes` (for layers whose
            outputs follow their inputs, e.g. depthwise: outputs per input
            channel; else 0) and the fitted coefficients `coef` of
            `ms = a + b * c_in * c_out + c * c_in + d * c_out`.
        merges: Per element-wise merge: `{"elements": positions per channel,
            "channels": channels}`.
        per_element_ms: Time of one element of an element-wise merge.
        scale: Mean ratio of measured to raw savings over the calibration copies.
        calibration: Uniformly pruned copies of the model, measured: `[{"ratio",
            "measured_ms", "raw_saved_ms"}]`. A one-layer model's time does not
            carry over exactly into a network (caches, fusion, the interpreter's
            fixed costs, tiles), so the raw savings of the layer timings are
            mapped to measured savings through these points (`calibrated`).
        tile: The runtime's output-channel tile, measured (`measure_tile`): a
            layer with `c` output channels costs what `ceil(c / tile) * tile`
            channels cost.
        build_seconds: How long measuring took.
    """

    key: str
    runtime: str
    batch_size: int
    threads: int
    base_ms: float
    layers: dict[str, dict]
    merges: dict[str, dict] = dataclasses.field(default_factory=dict)
    per_element_ms: float = 0.0
    scale: float = 1.0
    calibration: list = dataclasses.field(default_factory=list)
    tile: int = 1
    build_seconds: float = 0.0

    def layer_ms(self, name: str, c_in: int, c_out: int) -> float:
        """Fitted time of one weight layer at the given widths."""
        a, b, c, d = self.layers[name]["coef"]
        c_out = _tiled(c_out, self.tile)
        if self.layers[name]["passes"]:
            c_in = _tiled(c_in, self.tile)
        return max(0.0, a + b * c_in * c_out + c * c_in + d * c_out)

    def predict(
        self,
        in_channels: Mapping[str, int] | None = None,
        out_channels: Mapping[str, int] | None = None,
        tensor_channels: Mapping[str, int] | None = None,
    ) -> float:
        """Predicted milliseconds of the model with fewer channels in some layers.

        Args:
            in_channels: Layer name -> input channels it would have.
            out_channels: Layer name -> output channels it would have.
            tensor_channels: Layer name -> channels of its output (for merges).

        Returns:
            The measured whole-model time minus the calibrated savings of the
            narrower layers (see `calibrated`).
        """
        saved = self.raw_saved(in_channels, out_channels, tensor_channels)
        return float(max(self.base_ms - self.calibrated(saved), 0.0))

    def calibrated(self, raw_saved: float) -> float:
        """Measured savings for the layer timings' raw savings.

        Piecewise linear through the calibration copies (and the origin), made
        monotone, extended past the last copy with the mean slope `scale`; just
        `scale * raw_saved` without calibration copies.
        """
        if not self.calibration:
            return self.scale * raw_saved
        raw = [0.0] + [c["raw_saved_ms"] for c in self.calibration]
        saved = [0.0] + [self.base_ms - c["measured_ms"] for c in self.calibration]
        order = np.argsort(raw)
        raw = np.asarray(raw)[order]
        saved = np.maximum.accumulate(np.asarray(saved)[order])
        if raw_saved <= raw[-1]:
            return float(np.interp(raw_saved, raw, saved))
        return float(saved[-1] + self.scale * (raw_saved - raw[-1]))

    def raw_saved(
        self,
        in_channels: Mapping[str, int] | None = None,
        out_channels: Mapping[str, int] | None = None,
        tensor_channels: Mapping[str, int] | None = None,
    ) -> float:
        """Milliseconds the narrower layers save by their own timings (unscaled)."""
        in_channels = in_channels or {}
        out_channels = out_channels or {}
        tensor_channels = tensor_channels or {}
        saved = 0.0
        for name, entry in self.layers.items():
            c_in = in_channels.get(name, entry["c_in"])
            if entry["passes"]:
                c_out = c_in * entry["passes"]
            else:
                c_out = out_channels.get(name, entry["c_out"])
            if c_in == entry["c_in"] and c_out == entry["c_out"]:
                continue
            saved += self.layer_ms(name, entry["c_in"], entry["c_out"])
            saved -= self.layer_ms(name, c_in, c_out)
        for name, merge in self.merges.items():
            channels = tensor_channels.get(name, merge["channels"])
            saved += (
                self.per_element_ms * merge["elements"] * (merge["channels"] - channels)
            )
        return saved

    def to_json(self) -> str:
        """Serializes the model; `LatencyModel.from_json` restores it."""
        data = dataclasses.asdict(self)
        return json.dumps({"format": _FORMAT, "version": _VERSION, **data}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatencyModel:
        """Restores a model written by `to_json`.

        Raises:
            InvalidArgumentError: if the text is not a latency model.
        """
        try:
            data = json.loads(text)
            if data.pop("format") != _FORMAT or data.pop("version") != _VERSION:
                raise ValueError("not a hos_keras latency model of this version")
            return cls(**data)
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidArgumentError(
                f"Cannot read the latency model: {error}. Pass the text "
                "LatencyModel.to_json wrote (a cache file that fails to read is "
                "rebuilt by build_latency_model)."
            ) from None


def _tiled(channels, tile: int):
    """Channels rounded up to the runtime's tile (works on arrays too)."""
    return np.ceil(np.asarray(channels) / tile) * tile if tile > 1 else channels


_TILES = (1, 2, 4, 8, 16, 32)


def measure_tile(
    runtime: str = "tflite",
    *,
    threads: int = 2,
    batch_size: int = 1,
    runs: int = 40,
    cache_dir: str | os.PathLike | None = None,
) -> int:
    """The output-channel multiple a runtime's convolution kernels compute in.

    Times a 3x3 convolution (16x16 input, 32 channels) at every output width from
    1 to 48 and returns the tile among 1, 2, 4, ..., 32 whose step function
    `ceil(c / tile) * tile` explains the times best (least squares). Vectorized
    kernels compute whole tiles, so 17 channels cost what 32 do when the tile is
    16. Cached per runtime, threads, batch size and machine.

    Args:
        runtime: `"tflite"` or `"tf"`. Defaults to `"tflite"`.
        threads: TFLite interpreter threads. Defaults to `2`.
        batch_size: Batch size for the TensorFlow runtime. Defaults to `1`.
        runs: Timed calls per width. Defaults to `40`.
        cache_dir: Cache directory. Defaults to `None`: `default_cache_dir()`.

    Returns:
        The tile, e.g. 16 for XNNPACK on AVX-512 or AVX2 machines.
    """
    if runtime not in RUNTIMES:
        raise InvalidArgumentError(
            f"Received runtime={runtime!r}; pass one of {list(RUNTIMES)}."
        )
    key = hashlib.sha256(
        f"tile|{runtime}|{threads}|{batch_size}|{_machine()}|{_VERSION}".encode()
    ).hexdigest()[:24]
    path = Path(cache_dir or default_cache_dir()) / f"tile-{key}.json"
    cached = _read_cache(path, lambda text: int(json.loads(text)["tile"]))
    if cached is not None:
        return cached
    widths = np.arange(1, 49)
    models = []
    for c in widths:
        x = keras.Input((16, 16, 32))
        models.append(keras.Model(x, keras.layers.Conv2D(int(c), 3, padding="same")(x)))
    times = np.array(_time_models(models, runtime, batch_size, threads, runs))
    errors = {}
    for tile in _TILES:
        features = np.stack([np.ones(len(widths)), _tiled(widths, tile)], axis=1)
        _, residual, *_ = np.linalg.lstsq(features, times, rcond=None)
        errors[tile] = float(residual[0]) if len(residual) else 0.0
    best = min(_TILES, key=lambda t: (errors[t], -t))
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, json.dumps({"tile": best, "errors": errors}))
    return best


def _read_cache(path: Path, parse: Callable[[str], Any]) -> Any:
    """`parse(text of path)`, or `None` when the file is missing; an unreadable
    file (truncated, corrupted, another version) is reported with a warning that
    names it and rebuilt by the caller."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return parse(text)
    except (ValueError, KeyError, TypeError, InvalidArgumentError) as error:
        warnings.warn(
            f"The latency cache file {path} is unreadable ({error}); rebuilding it.",
            stacklevel=3,
        )
        return None


def default_cache_dir() -> Path:
    """`$HOS_KERAS_CACHE/latency`, else `~/.cache/hos_keras/latency`."""
    root = os.environ.get("HOS_KERAS_CACHE") or Path.home() / ".cache" / "hos_keras"
    return Path(root) / "latency"


def _machine() -> str:
    return "|".join(
        [
            platform.node(),
            platform.machine(),
            platform.processor(),
            str(os.cpu_count()),
            tf.__version__,
        ]
    )


def _signature(call) -> dict:
    """What decides a layer's time: its type, config (no name) and input shape."""
    config = dict(call.operation.get_config())
    config.pop("name", None)
    shapes = [list(t.shape[1:]) for t in call.node.input_tensors]
    return {"type": type(call.operation).__name__, "config": config, "in": shapes}


def _key(model, runtime, batch_size, threads) -> str:
    parts = [
        json.dumps(
            [(c.name, _signature(c)) for c in graph.iter_calls(model)],
            sort_keys=True,
            default=str,
        ),
        runtime,
        str(batch_size),
        str(threads),
        _machine(),
        str(_VERSION),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _single_layer(call, c_in: int, c_out: int | None) -> keras.Model:
    """A model of one copy of the layer, reading `c_in` and making `c_out`.

    The copy is called as the layer was (every tensor argument an input of the
    model: an attention layer's query, value, key and mask); `c_in` replaces
    the channels of its first input, and `c_out` counts what the layer's rule
    calls its output channels (an attention layer's heads or key/value heads).
    """
    layer, node = call.operation, call.node
    rule = call.rule
    widths = rule.widths(layer, node)
    first = node.input_tensors[0]
    shape = list(first.shape[1:])
    axis = len(shape) if _channels_last(layer) else 1
    full_in = int(shape[axis - 1]) if widths is None else widths[0]
    shape[axis - 1] = c_in
    keep_in = None if c_in == full_in else np.arange(c_in)
    keep_out = None if c_out is None else np.arange(c_out)
    config = rule.configure(dict(layer.get_config()), keep_in, keep_out)
    clone = type(layer).from_config(config)
    inputs, tensors = [], {}
    for tensor in node.input_tensors:
        if id(tensor) in tensors:
            continue
        dims = tuple(shape) if tensor is first else tuple(tensor.shape[1:])
        tensors[id(tensor)] = keras.Input(dims, batch_size=None, dtype=tensor.dtype)
        inputs.append(tensors[id(tensor)])
    args, kwargs = node.arguments.fill_in(tensors)
    outputs = clone(*args, **kwargs)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs)


def _channels(call) -> tuple[int, int]:
    """`(c_in, c_out)` of a call in its rule's terms (see `_single_layer`)."""
    widths = call.rule.widths(call.operation, call.node)
    if widths is not None:
        return widths
    last = _channels_last(call.operation)
    c_in = int(call.node.input_tensors[0].shape[-1 if last else 1])
    c_out = int(call.node.output_tensors[0].shape[-1 if last else 1])
    return c_in, c_out


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def build_latency_model(
    model: keras.Model,
    runtime: str = "tflite",
    *,
    threads: int = 2,
    batch_size: int = 1,
    runs: int = 30,
    cache_dir: str | os.PathLike | None = None,
    channel_graph: graph.ChannelGraph | None = None,
) -> LatencyModel:
    """Measures a model on a runtime and fits its latency model (or loads it).

    Args:
        model: A built single-input functional or Sequential model.
        runtime: `"tflite"` (the TFLite interpreter with XNNPACK, batch 1) or
            `"tf"` (a `tf.function` at `batch_size`). Defaults to `"tflite"`.
        threads: TFLite interpreter threads. Defaults to `2`.
        batch_size: Batch size of the TensorFlow runtime (TFLite always times
            batch 1). Defaults to `1`.
        runs: Timed calls per measurement (see `_typical`). Defaults to `30`.
        cache_dir: Where latency models are cached as JSON. Defaults to `None`:
            `default_cache_dir()`.
        channel_graph: The model's `hos_keras.channel_groups`, if already traced.

    Returns:
        A `LatencyModel`.

    Raises:
        InvalidArgumentError: for an unknown runtime or a non-positive count.

    Example:

    ```python
    table = hos_keras.latency.build_latency_model(model, "tflite", threads=2)
    plan = hos_keras.plan_pruning(model, allocation="target",
                                  latency_reduction=0.5, latency_model=table)
    ```
    """
    if runtime not in RUNTIMES:
        raise InvalidArgumentError(
            f"Received runtime={runtime!r}; pass one of {list(RUNTIMES)}."
        )
    threads = check_int("threads", threads)
    batch_size = 1 if runtime == "tflite" else check_int("batch_size", batch_size)
    runs = check_int("runs", runs)
    key = _key(model, runtime, batch_size, threads)
    path = Path(cache_dir or default_cache_dir()) / f"{key}.json"
    cached = _read_cache(path, LatencyModel.from_json)
    if cached is not None:
        return cached
    start = time.perf_counter()
    tile = measure_tile(
        runtime, threads=threads, batch_size=batch_size, cache_dir=cache_dir
    )
    if channel_graph is None:
        channel_graph = graph.channel_groups(model, warn=False)
    prunable = channel_graph.prunable
    produced = {p for g in prunable for p in g.producers}
    classes = (
        np.concatenate([channel_graph.classes[g.name] for g in prunable])
        if prunable
        else np.zeros(0, np.int64)
    )
    reads = {
        name
        for name, cls in channel_graph.inputs.items()
        if np.isin(cls, classes).any()
    }

    layers: dict[str, dict] = {}
    variants: dict[str, list] = {}  # signature -> [(c_in, c_out, model)]
    by_signature: dict[str, str] = {}
    for call in graph.iter_calls(model):
        rule = call.rule
        if rule is None or not rule.has_filters or call.name in layers:
            continue
        layer = call.operation
        c_in, c_out = _channels(call)
        passes = 0 if rule.creates(layer) else c_out // max(c_in, 1)
        signature = json.dumps(_signature(call), sort_keys=True, default=str)
        by_signature[call.name] = signature
        layers[call.name] = {"c_in": c_in, "c_out": c_out, "passes": passes}
        if signature in variants:
            continue
        vary_in = call.name in reads
        vary_out = call.name in produced and not passes
        samples = []
        for f_in, f_out in _SAMPLES:
            ci = max(1, round(c_in * f_in)) if vary_in else c_in
            co = max(1, round(c_out * f_out)) if vary_out else c_out
            if passes:
                co = ci * passes
            if (ci, co) not in samples:
                samples.append((ci, co))
        variants[signature] = [
            (ci, co, _single_layer(call, ci, None if passes else co))
            for ci, co in samples
        ]

    flat = [m for entries in variants.values() for _, _, m in entries]
    merges = _merges(model)
    merge_models = [_add_model(8, 8), _add_model(32, 64)] if merges else []
    timed = _time_models(
        [model, *flat, *merge_models], runtime, batch_size, threads, runs
    )
    base_ms, timed = timed[0], timed[1:]
    fits: dict[str, list[float]] = {}
    k = 0
    for signature, entries in variants.items():
        ci = np.array([e[0] for e in entries], dtype=np.float64)
        co = _tiled(np.array([e[1] for e in entries], dtype=np.float64), tile)
        if any(layers[n]["passes"] for n, g in by_signature.items() if g == signature):
            ci = _tiled(ci, tile)
        ms = np.array(timed[k : k + len(entries)])
        k += len(entries)
        features = np.stack([np.ones_like(ci), ci * co, ci, co], axis=1)
        coef, *_ = np.linalg.lstsq(features, ms, rcond=None)
        fits[signature] = [float(c) for c in coef]
    for name, signature in by_signature.items():
        layers[name]["coef"] = fits[signature]
    per_element = 0.0
    if merges:
        small, large = timed[k], timed[k + 1]
        per_element = max(0.0, (large - small) / (32 * 64 - 8 * 8))
    result = LatencyModel(
        key=key,
        runtime=runtime,
        batch_size=batch_size,
        threads=threads,
        base_ms=base_ms,
        layers=layers,
        merges=merges,
        per_element_ms=per_element,
        tile=tile,
    )
    if prunable:
        _calibrate(result, model, channel_graph, runs)
    result.build_seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, result.to_json())
    return result


def _uniform_widths(model, channel_graph, ratio: float) -> PruningPlan:
    """A plan keeping the first `1 - ratio` of every prunable group's channels:
    what calibration times is the widths, not which channels they are."""
    groups = {}
    for group in channel_graph.prunable:
        count = max(1, math.floor(group.channels * (1.0 - ratio) + 1e-9))
        groups[group.name] = GroupPlan(
            name=group.name,
            producers=group.producers,
            channels=group.channels,
            keep=np.arange(count, dtype=np.int64),
            ratio=ratio,
            statistic=None,
            scores=np.zeros(group.channels),
            members=group.members,
        )
    counter = cost_model.CostCounter(model, channel_graph)
    before = counter.cost({})
    after = counter.cost({name: g.keep for name, g in groups.items()})
    return PruningPlan(
        model_name=model.name,
        criterion="first channels",
        allocation="fixed",
        allocation_config={"ratio": ratio},
        groups=groups,
        frozen={},
        params_before=before["params"],
        params_after=after["params"],
        macs_before=before["macs"],
        macs_after=after["macs"],
    )


def _calibrate(result: LatencyModel, model, channel_graph, runs: int) -> None:
    """Fits `scale` (and re-measures `base_ms`) on uniformly pruned copies."""
    copies, raw = [], []
    counter = cost_model.ChannelCounter(channel_graph)
    for ratio in _CALIBRATION_RATIOS:
        plan = _uniform_widths(model, channel_graph, ratio)
        keeps = {name: entry.keep for name, entry in plan.groups.items()}
        raw.append(result.raw_saved(*counter.counts(keeps)))
        copies.append(surgery.slim_model(model, plan))
    times = _time_models(
        [model, *copies], result.runtime, result.batch_size, result.threads, 2 * runs
    )
    measured = np.array([times[0] - t for t in times[1:]])
    raw = np.array(raw)
    result.base_ms = times[0]
    if float(raw @ raw) > 0:
        result.scale = max(0.0, float(raw @ measured) / float(raw @ raw))
    result.calibration = [
        {"ratio": r, "measured_ms": t, "raw_saved_ms": float(s)}
        for r, t, s in zip(_CALIBRATION_RATIOS, times[1:], raw, strict=True)
    ]


def _add_model(elements: int, channels: int) -> keras.Model:
    """An element-wise merge of two tensors, to time its cost per element."""
    x = keras.Input((elements, channels))
    y = keras.layers.Activation("linear")(x)
    return keras.Model(x, keras.layers.Add()([x, y]))


def _merges(model) -> dict[str, dict]:
    """Element-wise merges of two or more tensors, with their sizes."""
    merges = {}
    for call in graph.iter_calls(model):
        rule = call.rule
        inputs = call.node.input_tensors
        if not isinstance(rule, (layer_rules.Tie, layer_rules.ElementwiseOp)):
            continue
        if len(inputs) < 2 or not call.node.output_tensors:
            continue
        shape = call.node.output_tensors[0].shape
        if any(d is None for d in shape[1:]) or len(shape) < 2:
            continue
        merges[call.name] = {
            "elements": int(np.prod(shape[1:-1], dtype=np.int64)),
            "channels": int(shape[-1]),
        }
    return merges


def measure_plan(model: keras.Model, plan, latency_model: LatencyModel) -> dict:
    """Slims the model by the plan and times both on the latency model's runtime.

    Returns:
        `{"measured_original_ms", "measured_slim_ms", "measured_speedup"}`, both
        models timed in turn.
    """
    slim = surgery.slim_model(model, plan)
    original_ms, slim_ms = _time_models(
        [model, slim],
        latency_model.runtime,
        latency_model.batch_size,
        latency_model.threads,
        runs=50,
    )
    return {
        "measured_original_ms": original_ms,
        "measured_slim_ms": slim_ms,
        "measured_speedup": original_ms / max(slim_ms, 1e-9),
    }


def original_and_slim(
    original: keras.Model,
    teacher: keras.Model,
    slim: keras.Model,
    sample,
    batch_sizes: Sequence[int] = (1, 32),
    runs: int = 20,
    tflite: bool = True,
) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """`compress`'s timing of a model before and after compression.

    Args:
        original: The model as the user gave it (timed in TensorFlow).
        teacher: Its uncompiled copy (converted for TFLite).
        slim: The compressed model.
        sample: Inputs of at least one example (see `measure_latency`).
        batch_sizes: Batch sizes of the TensorFlow timing; `()` skips it.
        runs: Timed calls per model and batch size.
        tflite: Also time both at batch 1 in the TFLite interpreter (single-input
            models; a conversion failure gives a warning and no figure).

    Returns:
        `({"original": {batch: ms}, "slim": {...}}, {"original": ms, "slim": ms})`,
        each empty when not measured.
    """
    latency = {}
    if batch_sizes:
        latency = measure_latency(
            {"original": original, "slim": slim}, sample, batch_sizes, runs=runs
        )
    timed = {}
    if tflite and len(original.inputs) == 1:
        try:
            timed = tflite_latency(
                {"original": teacher, "slim": slim},
                keras.tree.flatten(sample)[0],
                runs=runs,
            )
        except Exception as error:  # noqa: BLE001 - the converter raises many kinds
            warnings.warn(
                f"TFLite latency not measured: conversion failed "
                f"({type(error).__name__}: {' '.join(str(error).split())[:200]}).",
                stacklevel=3,
            )
    return latency, timed
