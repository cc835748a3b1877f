"""Property tests over random functional architectures (seeded).

Each example is a random DAG over sequences, images or volumes (Conv1D, Conv2D or
Conv3D models), drawn node by node from: convolutions with strides 1 or 2 and
`same` or `valid` padding, grouped Conv2D, Conv1D/2D/3DTranspose, DepthwiseConv and
SeparableConv (1D and 2D), max and average pooling with strides, Dense on the last
axis of feature maps, BatchNormalization, per-channel activations, a softmax over
the channels and LayerNormalization (both of which hos_keras must freeze), keras.ops
nodes (`x + 1`, `x * y`, `x - ops.mean` over the positions), Add, Concatenate,
squeeze-excitation gates made of 1x1 convolutions or of Dense layers on the pooled
vector (with a Reshape), nested models and shared layers. A model may have a second
input (a feature map with its own stem, or a vector read by a Dense layer in the
head) and a second output (a pooled Dense head or a 1x1 convolution's map); its
head is Flatten or global pooling, then Dense layers.

A third of the examples are transformers instead: token sequences `(batch,
length, width)` embedded by a Dense layer (and maybe a second sequence, the
context, of its own length), then blocks drawn by `random_blocks`: self- and
cross-attention (MultiHeadAttention with random heads, key and value sizes,
output width, gate and bias; GroupQueryAttention with query heads a multiple of
the key/value heads; causal masks), plain MLPs (Dense or EinsumDense, gelu, relu,
silu or keras-hub's gelu_approximate, in the projection or in an Activation
layer) and gated MLPs (`activation(gate) * up -> down`), each pre-norm, post-norm
or without LayerNormalization and with a residual add, with plain Dense,
LayerNormalization and Add nodes between blocks.

Each example draws one of every built-in weight criterion and one of a few
allocations (fixed ratios, global, Shapiro-Wilk). For any plan:

- the model slims without error, and slim(x) == mask(x) in a comparison with
  power (`invariants.check_invariant`: the outputs vary across the inputs, and
  the mask of a plan one channel different per group is a decoy it rejects);
- the profile of the slim model is what the plan predicted, parameters and MACs
  never increase, and the input model is unchanged;
- a softmax or LayerNormalization over the channels keeps its width;
- attention heads (whole key/value groups with grouped-query attention) and MLP
  widths, plain or gated, are pruned in some of the examples;
- the plan JSON round-trips;
- a criterion that cannot score a layer's small filters says so, naming the
  layer (the example then plans with l1, as the message advises);
- one example in four reloads from `.keras` with equal outputs (`check_reload`).

Example `i` draws from `numpy.random.default_rng(i)`, so a failure reproduces by
its test id (`...slims_exactly[17]`), and prints its draws and its model's summary.
The draws are uniform: hypothesis, which this file used before, drew unevenly
enough that 250 examples had no shared layer and missed a criterion, and shrinking
one failure took longer than the whole run. An example that cannot be checked
(listed in `ROUTES`) is skipped with the reason and counted. The last test reads
the counts: most examples must prune, few may be routed aside, and every feature
must have been drawn.

There are `EXAMPLES` = 180 of them, 68 transformers. On 2 shared cores an example
of feature maps takes about 0.55 s of CPU and a transformer about 1 s, so the file
takes about 145 s of CPU (user + sys; 175 s and 10 minutes of wall time when other
jobs loaded the cores four-fold). Its 400 examples of feature maps took 255 s of
CPU before the transformers came. The 180 still draw every feature: the rarest
(Conv1DTranspose, Conv3DTranspose, SeparableConv1D) twice, the rarest transformer
feature (a pruned key/value group) 8 times.
"""

import collections

import keras
import numpy as np
import pytest
import random_blocks
from invariants import (
    assert_equivalent,
    check_invariant,
    check_reload,
    different_plan,
    live_batchnorm,
    outputs,
    random_inputs,
)
from keras import layers, ops

import hos_keras
from hos_keras.errors import (
    InvalidArgumentError,
    NothingToPruneError,
    UnsupportedModelError,
)

# See the module docstring for what they take.
EXAMPLES = 180

ACTIVATIONS = ["relu", "gelu", "sigmoid", "tanh", "linear"]
# Every registered criterion that scores weights; those that need calibration
# data (dfs, taylor, ...) declare the statistics they read.
WEIGHT_CRITERIA = [
    name
    for name in hos_keras.criterion_names()
    if not getattr(hos_keras.get_criterion(name), "statistics", ())
]


def _fewest_weights(name):
    """The fewest weights per filter that criterion `name` scores (by trying)."""
    scorer = hos_keras.get_criterion(name)
    if isinstance(scorer, hos_keras.criteria.GroupCriterion):
        return 1  # bn_scale, with the L1 norm where no BatchNormalization is
    rng = np.random.default_rng(0)
    for rows in range(1, 8):
        try:
            scorer(rng.normal(size=(rows, 3)))
        except InvalidArgumentError:
            continue
        return rows
    raise AssertionError(f"criterion {name!r} scores no filter of < 8 weights")


FEWEST_WEIGHTS = {name: _fewest_weights(name) for name in WEIGHT_CRITERIA}
ALLOCATIONS = {
    "fixed 0.5": {"allocation": "fixed", "ratio": 0.5},
    "fixed 0.3, round_to 2": {"allocation": "fixed", "ratio": 0.3, "round_to": 2},
    "fixed per layer": {"allocation": "fixed", "ratio": {"conv*": 0.5, "*": 0.25}},
    "global 0.4": {"allocation": "global", "fraction": 0.4},
    "shapiro 2.5": {"allocation": "shapiro", "coefficient": 2.5},
}

CONV = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}
TRANSPOSE = {
    1: layers.Conv1DTranspose,
    2: layers.Conv2DTranspose,
    3: layers.Conv3DTranspose,
}
DEPTHWISE = {1: layers.DepthwiseConv1D, 2: layers.DepthwiseConv2D}
SEPARABLE = {1: layers.SeparableConv1D, 2: layers.SeparableConv2D}
MAX_POOL = {1: layers.MaxPooling1D, 2: layers.MaxPooling2D, 3: layers.MaxPooling3D}
AVERAGE_POOL = {
    1: layers.AveragePooling1D,
    2: layers.AveragePooling2D,
    3: layers.AveragePooling3D,
}
GLOBAL_AVERAGE = {
    1: layers.GlobalAveragePooling1D,
    2: layers.GlobalAveragePooling2D,
    3: layers.GlobalAveragePooling3D,
}
GLOBAL_MAX = {
    1: layers.GlobalMaxPooling1D,
    2: layers.GlobalMaxPooling2D,
    3: layers.GlobalMaxPooling3D,
}
WIDTHS = list(range(2, 9))
# Input positions per spatial axis, and the most any feature map may grow to.
SIZES = {1: range(8, 13), 2: range(5, 9), 3: range(4, 6)}
LARGEST = {1: 24, 2: 12, 3: 7}
# Positions of the token sequences (and of a second sequence, the context).
LENGTHS = range(3, 8)
# Widths of the sequences: a LayerNormalization over fewer channels leaves
# little but their signs (over two, one sign), and the comparisons no power.
SEQUENCE_WIDTHS = list(range(4, 9))

# Features every run must draw at least once (in the examples it checks).
FEATURES = [
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "grouped Conv2D",
    "MaxPooling",
    "AveragePooling",
    "strided convolution",
    "strided pooling",
    "valid padding",
    "Dense on feature maps",
    "Dense on vectors in the body",
    "BatchNormalization",
    "nested model",
    "shared layer",
    "two inputs",
    "two outputs",
    "frozen by a softmax",
    "frozen by LayerNormalization",
    "criterion refuses small filters",
    "reloaded",
    *(f"criterion {name}" for name in WEIGHT_CRITERIA),
    *(f"allocation {name}" for name in ALLOCATIONS),
    "sequence model",
    *random_blocks.FEATURES,
]
# Why an example may be skipped, each allowed for at most a tenth of them.
ROUTES = {
    # The Shapiro-Wilk allocation raises on a layer of fewer than 3 weights
    # (without naming it) where the other statistic allocations rank such a
    # layer as the most Gaussian.
    "shapiro and a kernel of < 3 weights",
    # slim_model configures a grouped Conv2D whose input channels a plan
    # prunes, but not its output channels, as if it were depthwise (groups =
    # kept inputs), and fails unless one input per group is kept. Checked to
    # still fail, so that a fix shows here.
    "grouped Conv2D with only its inputs pruned",
    # The channels the decoy swaps or removes hardly reach the outputs (a ReLU
    # unit that is zero on all the inputs, a narrow bottleneck before a global
    # pooling): no comparison could fail.
    "slim == mask without power",
}

# What the examples drew and how they ended, counted over the run (read by the
# last test).
_SEEN = collections.Counter()


class _Draws:
    """The seeded choices of one example, logged for its failure report."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.log = []

    def pick(self, options, label):
        """One of `options`, uniformly."""
        options = list(options)
        index = int(self.rng.integers(len(options)))
        value = options[index]
        if isinstance(value, (bool, int, str, tuple, type(None))):
            self.log.append(f"{label}={value!r}")
        else:
            self.log.append(f"{label}=#{index} of {len(options)}")
        return value


def _conv_size(size, kernel, stride, padding):
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def _transpose_size(size, kernel, stride, padding):
    if padding == "same":
        return size * stride
    return (size - 1) * stride + max(kernel, stride)


class _Builder:
    """Draws one architecture, node by node: of convolutional features on
    feature maps, or of transformer blocks (`random_blocks`) on sequences."""

    def __init__(self, draws, rank, sequence=False):
        self.pick = draws.pick
        self.rank = rank
        self.sequence = sequence
        self.count = 0
        self.shared = {}
        self.blocks = random_blocks.TransformerBlocks(self.pick, self.name)

    def name(self, kind):
        self.count += 1
        return f"{kind}{self.count}"

    def spatial(self, x):
        return tuple(int(d) for d in x.shape[1:-1])

    def geometry(self, x, kernel, transpose=False):
        """Draws `(strides, padding)` that keep every axis in [2, LARGEST]."""
        size = _transpose_size if transpose else _conv_size
        options = [
            (stride, padding)
            for stride in (1, 2)
            for padding in ("same", "valid")
            if all(
                2 <= size(d, kernel, stride, padding) <= LARGEST[self.rank]
                for d in self.spatial(x)
            )
        ]
        return self.pick(options, "strides, padding") if options else (1, "same")

    def conv(self, filters, kernel=3, **kwargs):
        return CONV[self.rank](
            filters, kernel, padding="same", name=self.name("conv"), **kwargs
        )

    def gate(self, x, c):
        """A squeeze-excitation gate of `x`: 1x1 convolutions or Dense layers."""
        dense = self.pick([True, False], "gate of Dense layers")
        s = GLOBAL_AVERAGE[self.rank](keepdims=not dense, name=self.name("gap"))(x)
        if dense:
            s = layers.Dense(max(1, c // 2), activation="relu", name=self.name("se"))(s)
            s = layers.Dense(c, activation="sigmoid", name=self.name("se"))(s)
            s = layers.Reshape((1,) * self.rank + (c,), name=self.name("reshape"))(s)
        else:
            s = self.conv(max(1, c // 2), 1, activation="relu")(s)
            s = self.conv(self.pick([1, c], "gate width"), 1, activation="sigmoid")(s)
        return layers.Multiply(name=self.name("gated"))([x, s])

    def sequence_step(self, x, pool):
        """A transformer block (or a plain layer between blocks) on `x`."""
        pick = self.pick
        others = [t for t in pool if t is not x]
        kinds = ["self-attention", "self-attention", "mlp", "gated mlp"]
        kinds += ["dense", "layer norm", "add"]
        if others:
            kinds += ["cross-attention", "cross-attention"]
        kind = pick(kinds, "block")
        if kind == "self-attention":
            return self.blocks.self_attention(x)
        if kind == "cross-attention":
            return self.blocks.cross_attention(x, pick(others, "context"))
        if kind in ("mlp", "gated mlp"):
            return self.blocks.mlp(x, gated=kind == "gated mlp")
        if kind == "dense":
            return layers.Dense(
                pick(SEQUENCE_WIDTHS, "units"),
                activation=pick([None, "relu"], "activation"),
                name=self.name("dense"),
            )(x)
        if kind == "layer norm":
            return layers.LayerNormalization(name=self.name("ln"))(x)
        same = [t for t in pool if t.shape[1:] == x.shape[1:]]
        return layers.Add(name=self.name("add"))([x, pick(same, "addend")])

    def step(self, pool):
        """Adds one node reading tensors from `pool`; returns the new tensor."""
        pick = self.pick
        x = pick(pool, "input")
        if self.sequence:
            return self.sequence_step(x, pool)
        c = int(x.shape[-1])
        same = [t for t in pool if t.shape[1:] == x.shape[1:]]
        aligned = [t for t in pool if t.shape[1:-1] == x.shape[1:-1]]
        kinds = [
            "conv",
            "transpose",
            "pool",
            "dense",
            "bn",
            "act",
            "softmax",
            "layer norm",
            "op_unary",
            "op_mul",
            "add",
            "se",
            "concat",
            "mean",
            "nested",
            "shared",
        ]
        if self.rank < 3:
            kinds += ["depthwise", "separable"]
        if self.rank == 2 and c % 2 == 0:
            kinds.append("grouped")
        kind = pick(kinds, "node")
        if kind == "conv":
            kernel = pick([1, 3], "kernel")
            stride, padding = self.geometry(x, kernel)
            return CONV[self.rank](
                pick(WIDTHS, "filters"),
                kernel,
                strides=stride,
                padding=padding,
                activation=pick([None, "relu"], "activation"),
                name=self.name("conv"),
            )(x)
        if kind == "transpose":
            kernel = pick([2, 3], "kernel")
            stride, padding = self.geometry(x, kernel, transpose=True)
            return TRANSPOSE[self.rank](
                pick(WIDTHS, "filters"),
                kernel,
                strides=stride,
                padding=padding,
                name=self.name("convt"),
            )(x)
        if kind == "pool":
            cls = pick(["max", "average"], "pooling")
            cls = (MAX_POOL if cls == "max" else AVERAGE_POOL)[self.rank]
            stride, padding = self.geometry(x, 2)
            return cls(2, strides=stride, padding=padding, name=self.name("pool"))(x)
        if kind == "dense":
            return layers.Dense(
                pick(WIDTHS, "units"),
                activation=pick([None, "relu"], "activation"),
                name=self.name("dense"),
            )(x)
        if kind == "grouped":
            return layers.Conv2D(
                2 * pick([1, 2, 3, 4], "filters per group"),
                3,
                padding="same",
                groups=2,
                name=self.name("grouped"),
            )(x)
        if kind == "depthwise":
            stride, padding = self.geometry(x, 3)
            return DEPTHWISE[self.rank](
                3,
                strides=stride,
                padding=padding,
                depth_multiplier=pick([1, 2], "depth multiplier"),
                name=self.name("dw"),
            )(x)
        if kind == "separable":
            stride, padding = self.geometry(x, 3)
            return SEPARABLE[self.rank](
                pick(WIDTHS, "filters"),
                3,
                strides=stride,
                padding=padding,
                name=self.name("sep"),
            )(x)
        if kind == "bn":
            return layers.BatchNormalization(name=self.name("bn"))(x)
        if kind == "act":
            activation = pick(ACTIVATIONS, "activation")
            return layers.Activation(activation, name=self.name("act"))(x)
        if kind == "softmax":
            # Three ways to normalise over the channels; all must freeze them.
            how = pick(["Softmax", "Activation", "conv activation"], "softmax")
            if how == "Softmax":
                return layers.Softmax(name=self.name("softmax"))(x)
            if how == "Activation":
                return layers.Activation("softmax", name=self.name("softmax"))(x)
            return self.conv(pick(WIDTHS, "filters"), activation="softmax")(x)
        if kind == "layer norm":
            return layers.LayerNormalization(name=self.name("ln"))(x)
        if kind == "op_unary":
            return ops.relu(x + 1.0) * 0.5
        if kind == "op_mul":
            return x * pick(same, "factor")
        if kind == "add":
            return layers.Add(name=self.name("add"))([x, pick(same, "addend")])
        if kind == "se":
            return self.gate(x, c)
        if kind == "concat":
            y = pick(aligned, "concatenated")
            return layers.Concatenate(name=self.name("cat"))([x, y])
        if kind == "mean":
            # Half the mean: a global pooling after it still sees the signal.
            axes = list(range(1, self.rank + 1))
            return x - 0.5 * ops.mean(x, axis=axes, keepdims=True)
        if kind == "nested":
            inner_in = keras.Input(tuple(x.shape[1:]))
            y = self.conv(pick(WIDTHS, "filters"))(inner_in)
            y = layers.BatchNormalization(name=self.name("bn"))(y)
            inner = keras.Model(inner_in, layers.ReLU()(y), name=self.name("nested"))
            return inner(x)
        # "shared": one conv applied to two tensors of the same shape.
        key = tuple(x.shape[1:])
        if key not in self.shared:
            self.shared[key] = self.conv(pick(WIDTHS, "filters"))
        layer = self.shared[key]
        y = pick(same, "second input")
        return layers.Add(name=self.name("add"))([layer(x), layer(y)])


def _reached_inputs(tensor, inputs):
    """Which of `inputs` the graph behind `tensor` reads."""
    wanted = {id(t): i for i, t in enumerate(inputs)}
    found, stack, seen = set(), [tensor], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) in wanted:
            found.add(wanted[id(t)])
            continue
        operation, node_index, _ = t._keras_history
        stack.extend(operation._inbound_nodes[node_index].input_tensors)
    return found


def _architecture(draws):
    """A random model, and the transformer features it drew."""
    pick = draws.pick
    kind = pick([1, 2, 2, 3, "sequence", "sequence"], "rank or sequence")
    sequence = kind == "sequence"
    rank = 1 if sequence else kind
    builder = _Builder(draws, rank, sequence)
    if sequence:
        # Tokens embedded by a Dense layer; a second sequence of its own length.
        inputs = [keras.Input((pick(LENGTHS, "length"), 3), name="tokens")]
        stem = layers.Dense(pick(SEQUENCE_WIDTHS, "stem"), name="embed")
        pool = [stem(inputs[0])]
    else:
        spatial = tuple(pick(SIZES[rank], "size") for _ in range(rank))
        inputs = [keras.Input((*spatial, 3), name="image")]
        pool = [builder.conv(pick(WIDTHS, "stem"))(inputs[0])]
    second = pick([None, None, "map", "vector"], "second input")
    if second == "map" and sequence:
        inputs.append(keras.Input((pick(LENGTHS, "length"), 2), name="context"))
        stem = layers.Dense(pick(SEQUENCE_WIDTHS, "second stem"), name="context_embed")
        pool.append(stem(inputs[1]))
    elif second == "map":
        inputs.append(keras.Input((*spatial, 2), name="extra"))
        pool.append(builder.conv(pick(WIDTHS, "second stem"))(inputs[1]))
    elif second == "vector":
        inputs.append(keras.Input((5,), name="extra"))
    for _ in range(pick(range(1, 7), "nodes")):
        pool.append(builder.step(pool))

    x = pool[-1]
    head = pick(["flatten", "average", "max"], "head")
    if head == "flatten":
        x = layers.Flatten(name="head_flatten")(x)
    else:
        x = (GLOBAL_AVERAGE if head == "average" else GLOBAL_MAX)[rank](
            name="head_pool"
        )(x)
    if second == "vector":
        side = layers.Dense(4, activation="relu", name="side")(inputs[1])
        x = layers.Concatenate(name="join")([x, side])
    if pick([True, False], "head BatchNormalization"):
        x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dense(pick(WIDTHS, "fc units"), activation="relu", name="fc")(x)
    outputs = [layers.Dense(3, name="logits")(x)]
    # A second output: drawn, or needed because the main head misses an input.
    missed = set(range(len(inputs))) - _reached_inputs(outputs[0], inputs)
    if missed or pick([True, False], "second output"):
        candidates = [
            t for t in pool if not missed or missed <= _reached_inputs(t, inputs)
        ]
        y = pick(candidates, "second output from")
        if pick(["map", "vector"], "second output kind") == "map":
            # tanh keeps this map on the scale of the logits: the comparisons'
            # tolerance follows the largest output.
            outputs.append(CONV[rank](2, 1, activation="tanh", name="aux_map")(y))
        else:
            y = GLOBAL_AVERAGE[rank](name="aux_pool")(y)
            outputs.append(layers.Dense(2, name="aux")(y))
    model = keras.Model(
        inputs if len(inputs) > 1 else inputs[0],
        outputs if len(outputs) > 1 else outputs[0],
        name="random",
    )
    drawn = builder.blocks.features(model) | ({"sequence model"} if sequence else set())
    return model, drawn


def _features(model):
    """The features of FEATURES that `model` has (layers and freeze paths)."""
    found = set()
    if len(model.inputs) > 1:
        found.add("two inputs")
    if len(model.outputs) > 1:
        found.add("two outputs")
    for layer in model._flatten_layers(include_self=False):
        kind = type(layer).__name__
        if isinstance(layer, keras.Model):
            found.add("nested model")
        elif kind.startswith(("Conv", "Depthwise", "Separable")):
            found.add(kind)
            if getattr(layer, "groups", 1) > 1:
                found.add("grouped Conv2D")
            if max(layer.strides) > 1:
                found.add("strided convolution")
            if layer.padding == "valid":
                found.add("valid padding")
            if len(layer._inbound_nodes) > 1:
                found.add("shared layer")
        elif kind.startswith(("MaxPooling", "AveragePooling")):
            found.add(kind[:-2])
            if max(layer.strides) > 1:
                found.add("strided pooling")
        elif isinstance(layer, layers.Dense):
            if len(layer.input.shape) > 2:
                found.add("Dense on feature maps")
            elif layer.name not in ("fc", "logits", "aux"):
                found.add("Dense on vectors in the body")
        elif isinstance(layer, layers.BatchNormalization):
            found.add(kind)
    for reason in hos_keras.channel_groups(model, warn=False).frozen.values():
        if "softmax" in reason:
            found.add("frozen by a softmax")
        if "LayerNormalization" in reason:
            found.add("frozen by LayerNormalization")
    return found


def _normalised_widths(model):
    """`{name: channels}` of the top-level layers that normalise over the
    channels: a softmax (layer, activation or a convolution's activation) or a
    LayerNormalization."""
    widths = {}
    for layer in model.layers:
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        if isinstance(layer, (layers.Softmax, layers.LayerNormalization)) or (
            activation == "softmax"
        ):
            widths[layer.name] = int(layer.output.shape[-1])
    return widths


def _live(model):
    """`invariants.live_batchnorm`, for models with several inputs too.

    For those, live_batchnorm draws gamma and beta and then hands
    `recalibrate_batchnorm` its inputs as a list, which it refuses; the statistics
    are then estimated here on the same inputs given as `(x,)`.
    """
    try:
        live_batchnorm(model)
    except InvalidArgumentError:
        if len(model.inputs) == 1:
            raise
        x = tuple(random_inputs(model, batch=64, seed=1))
        hos_keras.recalibrate_batchnorm(model, (x,), batch_size=32)


def _summary(model):
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=160)
    return "\n".join(lines)


def _small_producers(model, fewest):
    """The producers of prunable groups with fewer than `fewest` weights per
    filter."""
    graph = hos_keras.channel_groups(model, warn=False)
    return [
        name
        for group in graph.prunable
        for name in group.producers
        if hos_keras.filter_matrix(graph.layers[name]).shape[0] < fewest
    ]


def _smallest_kernel(model):
    """The fewest weights any kernel of `model` has."""
    return min(
        int(np.prod(layer.kernel.shape))
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "kernel", None) is not None
    )


def _grouped_inputs_only(model, plan):
    """Whether the plan prunes the inputs of a grouped (not depthwise) Conv2D to
    more than one per group, and not its outputs."""
    graph = hos_keras.channel_groups(model, warn=False)
    removed = graph.removed_classes({n: g.keep for n, g in plan.groups.items()})
    inputs, outputs_ = graph.kept_positions(removed)
    return any(
        isinstance(layer, layers.Conv2D)
        and layer.groups > 1
        and layer.kernel.shape[-2] > 1
        and name in inputs
        and len(inputs[name]) != layer.groups
        and name not in outputs_
        for name, layer in graph.layers.items()
    )


def _has_power(model, plan):
    """Whether `check_invariant`'s comparison of slim with mask could fail: its
    comparison of the mask with itself, against the same decoy, passes."""
    x = random_inputs(model, batch=4, seed=0)
    masked = outputs(hos_keras.mask_model(model, plan), x)
    decoy = outputs(hos_keras.mask_model(model, different_plan(plan)), x)
    try:
        assert_equivalent(masked, masked, decoys=[decoy], name=model.name)
    except AssertionError:
        return False
    return True


def _check(model, criterion, allocation, reload, features, tmp_path_factory):
    """Plans, slims and compares one model; returns a route of ROUTES when the
    example cannot be checked, else `None` (adding what it did to `features`)."""
    if allocation.startswith("shapiro") and _smallest_kernel(model) < 3:
        return "shapiro and a kernel of < 3 weights"
    options = ALLOCATIONS[allocation]
    if not hos_keras.channel_groups(model, warn=False).prunable:
        with pytest.raises(NothingToPruneError):
            hos_keras.plan_pruning(model, criterion=criterion, **options)
        features.add("nothing to prune")
        return None
    small = _small_producers(model, FEWEST_WEIGHTS[criterion])
    if small:
        # The criterion refuses filters too small for its statistic, naming the
        # layer; the plan then scores with l1, as the message advises.
        with pytest.raises(InvalidArgumentError, match="weights per filter") as error:
            hos_keras.plan_pruning(model, criterion=criterion, **options)
        assert any(f"Layer {name!r}" in str(error.value) for name in small)
        features.add("criterion refuses small filters")
        criterion = "l1"
    features.add(f"criterion {criterion}")
    plan = hos_keras.plan_pruning(model, criterion=criterion, seed=1, **options)
    assert hos_keras.PruningPlan.from_json(plan.to_json()) == plan
    assert plan.params_after <= plan.params_before == model.count_params()
    assert plan.macs_after <= plan.macs_before
    if plan.macs_after < plan.macs_before:
        features.add("pruned")
    if "sequence model" in features:
        features |= random_blocks.pruned_features(model, plan)

    if _grouped_inputs_only(model, plan):
        with pytest.raises(UnsupportedModelError, match="is not compatible"):
            hos_keras.slim_model(model, plan)
        return "grouped Conv2D with only its inputs pruned"
    try:
        slim = check_invariant(model, plan)
    except AssertionError:
        if _has_power(model, plan):
            raise
        return "slim == mask without power"
    assert _normalised_widths(slim) == _normalised_widths(model)

    if reload:
        path = tmp_path_factory.mktemp("slim") / "slim.keras"
        check_reload(slim, model, plan, path)
        features.add("reloaded")
    return None


def _run_example(index, tmp_path_factory):
    """Draws example `index` and checks it; counts it in `_SEEN` and returns
    its route (`None` when it was checked)."""
    # Without the garbage collection, which took most of an example's time.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(index)
    draws = _Draws(index)
    model, drawn = _architecture(draws)
    criterion = draws.pick(WEIGHT_CRITERIA, "criterion")
    allocation = draws.pick(sorted(ALLOCATIONS), "allocation")
    reload = draws.pick([True, False, False, False], "reload")
    _live(model)
    features = _features(model) | drawn | {f"allocation {allocation}"}
    try:
        route = _check(model, criterion, allocation, reload, features, tmp_path_factory)
    except BaseException:
        # pytest shows a failing test's output: the draws and the model.
        print(f"example {index}: {', '.join(draws.log)}")
        print(_summary(model))
        raise
    _SEEN["examples"] += 1
    if route is not None:
        _SEEN[f"routed: {route}"] += 1
        return route
    _SEEN["checked"] += 1
    _SEEN.update(features)
    return None


# Draws with a channel-mixing layer (softmax, LayerNormalization) freeze groups,
# with a warning.
@pytest.mark.filterwarnings("ignore:hos_keras does not prune:UserWarning")
@pytest.mark.parametrize("index", range(EXAMPLES))
def test_any_plan_of_a_random_architecture_slims_exactly(index, tmp_path_factory):
    route = _run_example(index, tmp_path_factory)
    if route is not None:
        pytest.skip(f"routed aside: {route}")


@pytest.mark.filterwarnings("ignore:hos_keras does not prune:UserWarning")
def test_the_examples_prune_and_cover_every_feature(tmp_path_factory):
    """Most examples prune, few are routed aside, every feature was drawn."""
    if not _SEEN["examples"]:
        # The examples did not run before this test (e.g. `-k cover`).
        for index in range(EXAMPLES):
            _run_example(index, tmp_path_factory)
    examples, checked = _SEEN["examples"], _SEEN["checked"]
    counts = {feature: _SEEN[feature] for feature in FEATURES}
    missing = [feature for feature, count in counts.items() if not count]
    assert not missing, f"never drawn in {checked} checked examples: {missing}"
    assert _SEEN["pruned"] >= 0.6 * checked, (
        f"only {_SEEN['pruned']} of {checked} checked examples pruned: {counts}"
    )
    for route in ROUTES:
        routed = _SEEN[f"routed: {route}"]
        assert routed <= 0.1 * examples, (
            f"{routed} of {examples} examples routed aside: {route}"
        )
