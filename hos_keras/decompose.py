"""Low-rank decomposition of Conv2D layers: Tucker-2 (HOOI) and filter groups.

The paper's optional second compression step (its step 2; see
docs/method.md#low-rank-step) replaces each conv kernel by a product of smaller
ones:

- `"tucker2"`: the Tucker-2 decomposition (Tucker 1966) of the kernel along its
  input- and output-channel modes, as Kim et al. (ICLR 2016) apply it to conv
  kernels, computed by higher-order orthogonal iteration (HOOI; De Lathauwer, De
  Moor, Vandewalle, SIAM J. Matrix Anal. Appl. 2000) started from the truncated
  higher-order SVD. `K ~ G x_in U x_out V` becomes three convs: 1x1 (c_in -> R3,
  kernel `U`, no bias), kxk (R3 -> R4, kernel `G`, the original strides, padding
  and dilation, no bias) and 1x1 (R4 -> c_out, kernel `V^T`, the original bias and
  activation). The first conv is pointwise and bias-free, so zero padding commutes
  with it and the three convs equal the approximated kernel exactly.
- `"fga"`: filter group approximation (Peng, Tian, Zhou, Sun, Yang, "Extreme
  Network Compression via Filter Group Approximation", ECCV 2018). The input
  channels are split into g groups; each group's kernel slice, a
  (k*k*c_in/g) x c_out matrix, is approximated at rank r by its truncated SVD. The
  conv becomes a g-group kxk conv (c_in -> g*r, the original strides, padding and
  dilation, no bias) followed by a 1x1 conv (g*r -> c_out, the original bias and
  activation).

The tensor algebra is a few SVDs of small unfoldings, written here in plain numpy
rather than taken from tensorly: it adds no runtime dependency, and the kernel is
at most a few million numbers. The tests compare the HOOI with
`tensorly.decomposition.partial_tucker` when tensorly is installed.

Naming: a decomposed layer `name` becomes `name_in`, `name_core` and `name`
(Tucker-2) or `name_core` and `name` (FGA). The last conv keeps the original name,
so the layers after it, pivots and profiles still find the layer's output there.

The model is rebuilt by the same graph replay as `hos_keras.slim_model`; the result
is a plain functional model of standard Conv2D layers (a Sequential model becomes
functional), saves to `.keras` and loads with `keras.models.load_model` without
custom objects. Only top-level Conv2D layers are decomposed: layers inside nested
models are copied as they are. The input model is not modified.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from hos_keras import graph
from hos_keras.errors import (
    InvalidArgumentError,
    UnknownNameError,
    check_int,
    check_real,
)
from hos_keras.profile import profile
from hos_keras.surgery import _rebuild, _Replay

__all__ = ["DecompositionReport", "decompose", "factor_for_macs"]

METHODS = ("tucker2", "fga")
# The default selection: Conv2D with a kernel larger than 1x1, groups == 1 and at
# least this many input and output channels.
MIN_CHANNELS = 8


@dataclasses.dataclass
class DecompositionReport:
    """What `decompose` did, per layer and in total.

    Attributes:
        method: `"tucker2"` or `"fga"`.
        factor: The compression factor used for layers without explicit ranks.
        layers: Layer name -> `{"ranks": (R3, R4) or (groups, rank),
            "kernel_error": ||K - K~|| / ||K||, "output_error": ||y - y~|| / ||y||
            of the layer's output on the batch (the layer fed its original input),
            "params": {"original": n, "decomposed": n},
            "macs": {"original": n, "decomposed": n}}`.
        params: `{"original": n, "decomposed": n}` of the whole model.
        macs: `{"original": n, "decomposed": n}` per sample (`hos_keras.profile`).
    """

    method: str
    factor: float
    layers: dict[str, dict]
    params: dict[str, int]
    macs: dict[str, int]

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)


def decompose(
    model: keras.Model,
    method: str = "tucker2",
    factor: float = 1.71,
    ranks: str | Mapping[str, Sequence[int]] | None = None,
    layers: Sequence[str] | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    data=None,
    return_report: bool = False,
    seed: int = 0,
):
    """Replaces Conv2D layers by low-rank factorizations, in a new model.

    By default every top-level `keras.layers.Conv2D` with a kernel larger than 1x1,
    `groups=1` and at least 8 input and 8 output channels is decomposed; `layers`
    names the layers instead. See the module docstring for the two methods and the
    names of the new layers.

    Ranks for a compression factor X (the parameter ratio of the layer, bias
    aside): for Tucker-2, the rule of the paper's reference code
    (docs/method.md#tucker-2-ranks): beta = 1 + (c_out/c_in - 1)/X if c_out > c_in,
    1/(1 + (c_in/c_out - 1)/X) if c_in > c_out, else 1;
    R3 = floor of the positive root of
    R^2 + (c_in + beta*c_out)/(beta*k^2) R - c_in*c_out/(X*beta) = 0;
    R4 = ceil(beta*R3); R3 clipped to [1, c_in], R4 to [1, c_out]. For FGA, whose
    k*k*(c_in/g)*(g*r) + g*r*c_out parameters do not depend on g in the kxk part,
    every divisor g of c_in is tried with the largest r within the budget,
    r = floor(k^2*c_in*c_out / (X*(k^2*c_in + g*c_out))) clipped to
    [1, min(c_out, k^2*c_in/g)], and the (g, r) with the smallest kernel
    reconstruction error is kept (the smaller g on a tie).

    Args:
        model: A built functional or Sequential model.
        method: `"tucker2"` or `"fga"`. Defaults to `"tucker2"`.
        factor: Compression factor X >= 1 of each layer without explicit ranks.
            Defaults to `1.71` (the reference's value).
        ranks: `None` (from `factor`), `"full"` (exact: R3 = c_in, R4 = c_out for
            Tucker-2; one group at rank min(c_out, k*k*c_in) for FGA), or a mapping
            from layer name to `(R3, R4)` (Tucker-2) or `(groups, rank)` (FGA);
            layers it does not name use `factor`. Defaults to `None`.
        layers: Names of the Conv2D layers to decompose, or `None` for the default
            selection above. Defaults to `None`.
        tol: HOOI stops when the fit ||G||/||K|| changes by less than `tol`
            (relative). Defaults to `1e-6`.
        max_iter: Maximum HOOI iterations after the HOSVD (0 keeps the truncated
            HOSVD). Defaults to `100`.
        data: A batch of model inputs for the report's output errors, or `None`
            for a standard-normal batch of 4. Defaults to `None`.
        return_report: Also return a `DecompositionReport`. Defaults to `False`.
        seed: Seed of the random batch. Defaults to `0`.

    Returns:
        The new functional `keras.Model`, or `(model, report)` when
        `return_report=True`.

    Raises:
        UnknownNameError: for an unknown `method`, or a name in `layers` or `ranks`
            that is not a top-level layer of the model.
        InvalidArgumentError: for a factor below 1, ranks out of range, a named
            layer that is not a Conv2D with `groups=1`, a `ranks` key that is not
            selected, new layer names that clash with existing ones, or
            `return_report=True` for a model with unknown input dimensions.
        UnsupportedModelError: for a subclassed or unbuilt model.

    Example:

    ```python
    small, report = hos_keras.decompose(model, factor=2.0, return_report=True)
    report.layers["conv2"]["ranks"], report.macs
    small.save("small.keras")
    ```
    """
    if method not in METHODS:
        raise UnknownNameError(
            f"Received method={method!r}; pass one of {list(METHODS)}."
        )
    factor = check_real(
        "factor", factor, 1.0, " (a compression factor: 2.0 halves each layer)"
    )
    if not isinstance(tol, numbers.Real) or tol < 0:
        raise InvalidArgumentError(f"Received tol={tol!r}; pass a number >= 0.")
    max_iter = check_int("max_iter", max_iter, minimum=0)
    source = model
    if isinstance(model, keras.Sequential):
        source = graph._functional(model)
    top = {node.operation.name: node for node in _layer_nodes(source)}
    selected = _select(top, layers, method)
    if not selected:
        warnings.warn(
            f"decompose: no layer of model {model.name!r} is selected (the default "
            "takes Conv2D layers with a kernel larger than 1x1, groups=1 and at "
            f"least {MIN_CHANNELS} input and output channels); the result is a copy.",
            stacklevel=2,
        )
    explicit = _explicit_ranks(ranks, top, selected)

    factorized = {}
    for name in selected:
        kernel = np.asarray(top[name].operation.kernel, dtype=np.float64)
        rank = explicit.get(name, "full" if ranks == "full" else None)
        factorized[name] = _factorize(name, kernel, method, factor, rank, tol, max_iter)
    _check_names(top, factorized)

    new_model = _rebuild(_DecomposingReplay(factorized), source, model.name)
    if new_model.name != model.name:
        new_model = keras.Model(new_model.input, new_model.output, name=model.name)
    if not return_report:
        return new_model
    return new_model, _report(
        model, source, new_model, top, factorized, method, factor, data, seed
    )


def factor_for_macs(
    model: keras.Model,
    macs_reduction: float,
    method: str = "tucker2",
    layers: Sequence[str] | None = None,
    *,
    precision: float = 0.01,
) -> float:
    """A compression factor whose decomposition removes `macs_reduction` of MACs.

    Bisects the factor X of `decompose` (on a log scale, between 1 and 1024)
    until the decomposed model has at most `1 - macs_reduction` of the model's
    MACs (`hos_keras.profile`), e.g. to compare a decomposition with a pruning
    plan at the same MACs. For Tucker-2, whose ranks fall monotonically with X,
    this is the smallest such factor (to `precision`); FGA picks its groups by
    kernel error, so its MACs need not be monotone in X and the factor is one
    that reaches the target. Each step decomposes without HOOI iterations (the
    ranks depend on the factor alone), so it costs a rebuild of the model.

    Args:
        model: A built functional or Sequential model.
        macs_reduction: Fraction of the whole model's MACs to remove, in (0, 1).
        method: `"tucker2"` or `"fga"`. Defaults to `"tucker2"`.
        layers: The layers to decompose, as in `decompose`. Defaults to `None`.
        precision: Relative precision of the factor. Defaults to `0.01`.

    Returns:
        The factor, to pass to `decompose(model, method, factor)`.

    Raises:
        InvalidArgumentError: for a reduction outside (0, 1), or one that even
            rank-1 factors of the selected layers cannot reach (the message gives
            the largest reachable reduction).

    Example:

    ```python
    factor = hos_keras.factor_for_macs(model, 0.5)
    small = hos_keras.decompose(model, factor=factor)   # about 2x fewer MACs
    ```
    """
    if not (isinstance(macs_reduction, numbers.Real) and 0.0 < macs_reduction < 1.0):
        raise InvalidArgumentError(
            f"Received macs_reduction={macs_reduction!r}; pass a fraction in (0, "
            "1), e.g. 0.5 for half the MACs."
        )
    if not (isinstance(precision, numbers.Real) and precision > 0):
        raise InvalidArgumentError(
            f"Received precision={precision!r}; pass a number > 0, e.g. 0.01."
        )
    budget = (1.0 - macs_reduction) * profile(model)["macs"]

    def macs(factor: float) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = decompose(model, method, factor, layers=layers, max_iter=0)
        return profile(small)["macs"]

    low, high = 1.0, 1024.0
    least = macs(high)
    if least > budget:
        raise InvalidArgumentError(
            f"Cannot reach macs_reduction={macs_reduction}: decomposing the "
            f"selected layers by {method} removes at most "
            f"{1 - least / profile(model)['macs']:.1%} of the MACs. Ask for less or "
            "select more layers."
        )
    while high / low > 1.0 + precision:
        middle = math.sqrt(low * high)
        if macs(middle) <= budget:
            high = middle
        else:
            low = middle
    return high


# Selection and ranks -----------------------------------------------------------


def _layer_nodes(model) -> list:
    """The first call node of every top-level layer."""
    seen, nodes = set(), []
    for node in graph.functional_nodes(model):
        op = node.operation
        if node.is_input or isinstance(op, keras.layers.InputLayer):
            continue
        if id(op) not in seen:
            seen.add(id(op))
            nodes.append(node)
    return nodes


def _decomposable(layer) -> bool:
    return type(layer) is keras.layers.Conv2D and layer.groups == 1


def _select(top: dict, names, method: str) -> list[str]:
    if names is None:
        return [
            name
            for name, node in top.items()
            if _decomposable(node.operation)
            and math.prod(node.operation.kernel_size) > 1
            and min(node.operation.kernel.shape[2:]) >= MIN_CHANNELS
        ]
    if isinstance(names, str):
        names = [names]
    convs = [n for n, node in top.items() if _decomposable(node.operation)]
    for name in names:
        if name not in top:
            raise UnknownNameError(
                f"Received layers=[..., {name!r}, ...]; the model has no top-level "
                f"layer {name!r} (layers inside nested models are not decomposed). "
                f"Its decomposable Conv2D layers: {convs}."
            )
        layer = top[name].operation
        if not _decomposable(layer):
            kind = type(layer).__name__
            if isinstance(layer, keras.layers.Conv2D):
                kind += f" with groups={layer.groups}"
            raise InvalidArgumentError(
                f"Layer {name!r} is a {kind}; method={method!r} decomposes Conv2D "
                "layers with groups=1. Remove it from `layers`."
            )
    return list(dict.fromkeys(names))


def _explicit_ranks(ranks, top: dict, selected: list[str]) -> dict:
    if ranks is None or ranks == "full":
        return {}
    if not isinstance(ranks, Mapping):
        raise InvalidArgumentError(
            f"Received ranks={ranks!r}; pass None, 'full' or a mapping from layer "
            "name to a pair of ranks."
        )
    out = {}
    for name, pair in ranks.items():
        if name not in top:
            raise UnknownNameError(
                f"Received ranks[{name!r}]; the model has no top-level layer {name!r}."
            )
        if name not in selected:
            raise InvalidArgumentError(
                f"Received ranks[{name!r}] but layer {name!r} is not decomposed; "
                "add it to `layers`."
            )
        if (
            not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool)
                for v in pair
            )
        ):
            raise InvalidArgumentError(
                f"Received ranks[{name!r}]={pair!r}; pass a pair of integers."
            )
        out[name] = (int(pair[0]), int(pair[1]))
    return out


def _tucker2_ranks(c_in: int, c_out: int, k: int, factor: float) -> tuple[int, int]:
    """(R3, R4) of the reference's rule for a kernel with k = kh*kw taps."""
    if c_out > c_in:
        beta = 1 + (c_out / c_in - 1) / factor
    elif c_in > c_out:
        beta = 1 / (1 + (c_in / c_out - 1) / factor)
    else:
        beta = 1.0
    b = (c_in + beta * c_out) / (beta * k)
    c = c_in * c_out / (factor * beta)
    root = (-b + math.sqrt(b * b + 4 * c)) / 2
    r3 = math.floor(root)
    r4 = math.ceil(beta * r3)
    return min(max(r3, 1), c_in), min(max(r4, 1), c_out)


# The factorizations ------------------------------------------------------------


@dataclasses.dataclass
class _Factorized:
    """One layer's factorization: ranks, new kernels (first to last) and error."""

    method: str
    ranks: tuple[int, int]
    kernels: list[np.ndarray]
    error: float


def _factorize(name, kernel, method, factor, rank, tol, max_iter) -> _Factorized:
    kh, kw, c_in, c_out = kernel.shape
    if method == "tucker2":
        if rank == "full":
            rank = (c_in, c_out)
        elif rank is None:
            rank = _tucker2_ranks(c_in, c_out, kh * kw, factor)
        r3, r4 = rank
        if not (1 <= r3 <= c_in and 1 <= r4 <= c_out):
            raise InvalidArgumentError(
                f"Received ranks[{name!r}]={rank!r}; layer {name!r} has c_in={c_in} "
                f"and c_out={c_out}: pass (R3, R4) with 1 <= R3 <= {c_in} and "
                f"1 <= R4 <= {c_out}."
            )
        core, u_in, u_out = _hooi(kernel, r3, r4, tol, max_iter)
        kernels = [u_in[None, None], core, u_out.T[None, None]]
        approx = u_in @ core @ u_out.T
        return _Factorized(method, rank, kernels, _relative(kernel, approx))
    if rank == "full":
        rank = (1, min(c_out, kh * kw * c_in))
    elif rank is None:
        rank = _fga_ranks(kernel, factor)
    groups, r = rank
    if (
        groups < 1
        or c_in % groups
        or not 1 <= r <= min(c_out, kh * kw * c_in // groups)
    ):
        raise InvalidArgumentError(
            f"Received ranks[{name!r}]={rank!r}; layer {name!r} has c_in={c_in} and "
            f"c_out={c_out}: pass (groups, rank) with groups dividing {c_in} and "
            f"1 <= rank <= min(c_out, k*k*c_in/groups)."
        )
    grouped, pointwise, approx = _fga(kernel, groups, r)
    return _Factorized(
        method, rank, [grouped, pointwise[None, None]], _relative(kernel, approx)
    )


def _relative(reference: np.ndarray, approx: np.ndarray) -> float:
    norm = float(np.linalg.norm(reference))
    return float(np.linalg.norm(reference - approx)) / norm if norm else 0.0


def _leading(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The `rank` leading left singular vectors of a wide matrix.

    They are the leading eigenvectors of the small Gram matrix (c x c for c
    channels), much cheaper than an SVD of the c x (k*k*R) unfolding; a full rank
    gives a full orthonormal basis, so the factorization is then exact.
    """
    _, vectors = np.linalg.eigh(matrix @ matrix.T)
    return vectors[:, ::-1][:, :rank]


def _hooi(kernel: np.ndarray, r3: int, r4: int, tol: float, max_iter: int):
    """Tucker-2 of a (kh, kw, c_in, c_out) kernel along its channel modes.

    Returns `(core, u_in, u_out)`: core (kh, kw, r3, r4), orthonormal u_in
    (c_in, r3) and u_out (c_out, r4), kernel ~ core x_in u_in x_out u_out.
    `max_iter=0` gives the truncated HOSVD.
    """
    c_in, c_out = kernel.shape[2:]
    u_in = _leading(np.moveaxis(kernel, 2, 0).reshape(c_in, -1), r3)
    u_out = _leading(np.moveaxis(kernel, 3, 0).reshape(c_out, -1), r4)
    norm = float(np.linalg.norm(kernel))
    # Mode products are matmuls over the last two axes: u.T @ K acts on c_in and
    # K @ v on c_out.
    core = u_in.T @ kernel @ u_out
    fit = float(np.linalg.norm(core)) / norm if norm else 1.0
    for _ in range(max_iter):
        partial = kernel @ u_out
        u_in = _leading(np.moveaxis(partial, 2, 0).reshape(c_in, -1), r3)
        partial = u_in.T @ kernel
        u_out = _leading(np.moveaxis(partial, 3, 0).reshape(c_out, -1), r4)
        core = partial @ u_out
        previous, fit = fit, float(np.linalg.norm(core)) / norm if norm else 1.0
        if abs(fit - previous) <= tol * max(previous, 1e-300):
            break
    return core, u_in, u_out


def _group_matrices(kernel: np.ndarray, groups: int) -> np.ndarray:
    """(groups, kh*kw*c_in/groups, c_out): each input-channel group's slice."""
    kh, kw, c_in, c_out = kernel.shape
    per = c_in // groups
    split = kernel.reshape(kh, kw, groups, per, c_out)
    return np.moveaxis(split, 2, 0).reshape(groups, kh * kw * per, c_out)


def _fga_ranks(kernel: np.ndarray, factor: float) -> tuple[int, int]:
    kh, kw, c_in, c_out = kernel.shape
    k = kh * kw
    best = None
    for groups in (g for g in range(1, c_in + 1) if c_in % g == 0):
        budget = math.floor(k * c_in * c_out / (factor * (k * c_in + groups * c_out)))
        r = min(max(budget, 1), c_out, k * c_in // groups)
        values = np.linalg.svd(_group_matrices(kernel, groups), compute_uv=False)
        error = float(np.sum(values[:, r:] ** 2))
        if best is None or error < best[0]:
            best = (error, groups, r)
    return best[1], best[2]


def _fga(kernel: np.ndarray, groups: int, r: int):
    """Grouped kxk kernel (kh, kw, c_in/g, g*r), 1x1 matrix (g*r, c_out), approx."""
    kh, kw, c_in, c_out = kernel.shape
    per = c_in // groups
    u, s, vt = np.linalg.svd(_group_matrices(kernel, groups), full_matrices=False)
    root = np.sqrt(s[:, :r])
    left = u[:, :, :r] * root[:, None, :]  # (g, k*per, r)
    right = vt[:, :r, :] * root[:, :, None]  # (g, r, c_out)
    grouped = np.moveaxis(left.reshape(groups, kh, kw, per, r), 0, 3)
    grouped = grouped.reshape(kh, kw, per, groups * r)
    approx = np.einsum("gmr,gro->gmo", left, right).reshape(groups, kh, kw, per, c_out)
    approx = np.moveaxis(approx, 0, 2).reshape(kh, kw, c_in, c_out)
    return grouped, right.reshape(groups * r, c_out), approx


# Rebuilding --------------------------------------------------------------------


def _new_names(name: str, method: str) -> list[str]:
    if method == "tucker2":
        return [f"{name}_in", f"{name}_core", name]
    return [f"{name}_core", name]


def _check_names(top: dict, factorized: dict) -> None:
    taken = set(top) - set(factorized)
    for name, item in factorized.items():
        for new in _new_names(name, item.method)[:-1]:
            if new in taken or new in factorized:
                raise InvalidArgumentError(
                    f"Decomposing layer {name!r} needs a new layer named {new!r}, "
                    "which the model already has; rename that layer first."
                )


def _layer_configs(layer, item: _Factorized) -> list[dict]:
    """Conv2D configs of the new layers, first to last."""
    base = layer.get_config()
    plain = {
        "kernel_size": (1, 1),
        "strides": (1, 1),
        "padding": "valid",
        "dilation_rate": (1, 1),
        "groups": 1,
        "use_bias": False,
        "activation": None,
        "activity_regularizer": None,
    }
    names = _new_names(layer.name, item.method)
    keys = ("kernel_size", "strides", "padding", "dilation_rate")
    spatial = {key: base[key] for key in keys}
    if item.method == "tucker2":
        r3, r4 = item.ranks
        configs = [
            {**base, **plain, "filters": r3},
            {**base, **plain, **spatial, "filters": r4},
        ]
    else:
        groups, r = item.ranks
        configs = [
            {**base, **plain, **spatial, "filters": groups * r, "groups": groups}
        ]
    last = {k: v for k, v in plain.items() if k not in ("use_bias", "activation")}
    last["activity_regularizer"] = base.get("activity_regularizer")
    configs.append({**base, **last})
    for config, name in zip(configs, names, strict=True):
        config["name"] = name
    return configs


class _Factors:
    """The new Conv2D layers of one decomposed layer, called in a chain."""

    def __init__(self, layer, item: _Factorized):
        self.layers = [
            keras.layers.Conv2D.from_config(c) for c in _layer_configs(layer, item)
        ]
        self.item = item
        self.bias = layer.get_weights()[1:] if layer.use_bias else []

    def __call__(self, inputs):
        for layer in self.layers:
            inputs = layer(inputs)
        return inputs

    def set_weights(self) -> None:
        for layer, kernel in zip(self.layers, self.item.kernels, strict=True):
            dtype = layer.kernel.dtype
            extra = self.bias if layer is self.layers[-1] else []
            layer.set_weights([kernel.astype(dtype), *extra])


class _DecomposingReplay(_Replay):
    """The surgery replay, with each decomposed top-level layer made a chain."""

    def __init__(self, factorized: dict):
        super().__init__({}, slim=False)
        self.factorized = factorized

    def _clone(self, op, node, name, new_inputs):
        item = self.factorized.get(name)
        if item is None:
            return super()._clone(op, node, name, new_inputs)
        if id(op) not in self.clones:
            self.clones[id(op)] = _Factors(op, item)
        return self.clones[id(op)]

    def _set_weights(self, op, new_op, name) -> None:
        if not isinstance(new_op, _Factors):
            super()._set_weights(op, new_op, name)
        elif id(new_op) not in self.done:
            self.done.add(id(new_op))
            new_op.set_weights()


# The report --------------------------------------------------------------------


def _batch(model, data, seed: int):
    if data is not None:
        return data
    rng = np.random.default_rng(seed)
    batch = [
        rng.standard_normal((4, *t.shape[1:])).astype(t.dtype) for t in model.inputs
    ]
    return batch if len(batch) > 1 else batch[0]


def _report(model, source, new_model, top, factorized, method, factor, data, seed):
    for tensor in source.inputs:
        if any(d is None for d in tensor.shape[1:]):
            raise InvalidArgumentError(
                f"Model input {tensor.name!r} has shape {tensor.shape}; the report "
                "counts MACs per sample and draws its batch from the input shape, "
                "so it needs a model built with a fixed shape, e.g. "
                "keras.Input(shape=(32, 32, 3)). Call decompose with "
                "return_report=False for this model."
            )
    before, after = profile(model), profile(new_model)
    names = list(factorized)
    probe = keras.Model(
        source.inputs,
        [top[n].input_tensors[0] for n in names]
        + [top[n].output_tensors[0] for n in names],
    )
    values = probe.predict(_batch(source, data, seed), verbose=0)
    if not isinstance(values, list):
        values = [values]
    layers = {}
    for i, name in enumerate(names):
        x, y = values[i], np.asarray(values[len(names) + i], dtype=np.float64)
        for new in _new_names(name, method):
            x = new_model.get_layer(new)(x)
        diff = np.asarray(x, dtype=np.float64) - y
        norm = float(np.linalg.norm(y))
        new_names = _new_names(name, method)
        layers[name] = {
            "ranks": factorized[name].ranks,
            "kernel_error": factorized[name].error,
            "output_error": float(np.linalg.norm(diff)) / norm if norm else 0.0,
            "params": {
                "original": before["layers"][name]["params"],
                "decomposed": sum(after["layers"][n]["params"] for n in new_names),
            },
            "macs": {
                "original": before["layers"][name]["macs"],
                "decomposed": sum(after["layers"][n]["macs"] for n in new_names),
            },
        }
    return DecompositionReport(
        method=method,
        factor=float(factor),
        layers=layers,
        params={"original": before["params"], "decomposed": after["params"]},
        macs={"original": before["macs"], "decomposed": after["macs"]},
    )
