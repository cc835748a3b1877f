"""hos_keras: structured pruning of Keras 3 models with higher-order statistics.

An implementation of Chatzikonstantinou, Papadopoulos, Dimitropoulos, Daras,
"Neural Network Compression Using Higher-Order Statistics and Auxiliary
Reconstruction Losses", CVPR Workshops 2020.

The public API is exactly what `__all__` lists below.
"""

from hos_keras import _startup

if _startup.wanted():  # hos-keras and the recipes start quietly
    _startup.quiet_import()

from hos_keras import (
    allocation,
    attention,
    data,
    errors,
    fixed_blocks,
    latency,
    layer_rules,
    models,
    specs,
    training,
)
from hos_keras.activations import register_activation
from hos_keras.allocation import (
    Allocation,
    CumulantAllocation,
    FixedAllocation,
    GlobalAllocation,
    JarqueBeraAllocation,
    ShapiroWilkAllocation,
    TargetAllocation,
    allocation_names,
    get_allocation,
    register_allocation,
)
from hos_keras.blocks import TransformerBlock, transformer_blocks
from hos_keras.callbacks import HOSPruneCallback
from hos_keras.compress import CompressionReport, compress
from hos_keras.criteria import (
    CumulantCriterion,
    NormCriterion,
    RandomCriterion,
    criterion_names,
    get_criterion,
    register_criterion,
)
from hos_keras.decompose import DecompositionReport, decompose, factor_for_macs
from hos_keras.distill import (
    HOSDistiller,
    auto_pivots,
    fit_distributed,
    pivot_weights,
)
from hos_keras.graph import ChannelGraph, ChannelGroup, channel_groups
from hos_keras.hub_models import uniform_plan
from hos_keras.latency import measure_latency
from hos_keras.layer_rules import filter_matrix, register_layer_rule
from hos_keras.plan import plan_pruning, score_filters
from hos_keras.plan_record import GroupPlan, PruningPlan
from hos_keras.profile import profile
from hos_keras.recalibration import recalibrate_batchnorm
from hos_keras.sparsity import GroupSparsity
from hos_keras.specs import PruningSpec, TrainingSpec
from hos_keras.stats import (
    PowerSums,
    jarque_bera,
    kstat,
    kurtosis,
    shapiro_wilk,
    skew,
)
from hos_keras.surgery import mask_model, slim_model, weight_masks

__version__ = "0.1.0"


def __getattr__(name: str):
    # `hos_keras.tuner` imports keras_tuner, which only a search needs.
    if name == "tuner":
        import importlib

        return importlib.import_module("hos_keras.tuner")
    raise AttributeError(f"module 'hos_keras' has no attribute {name!r}")


__all__ = [
    "Allocation",
    "ChannelGraph",
    "ChannelGroup",
    "CompressionReport",
    "CumulantAllocation",
    "CumulantCriterion",
    "DecompositionReport",
    "FixedAllocation",
    "GlobalAllocation",
    "GroupPlan",
    "GroupSparsity",
    "HOSDistiller",
    "HOSPruneCallback",
    "JarqueBeraAllocation",
    "NormCriterion",
    "PowerSums",
    "PruningPlan",
    "PruningSpec",
    "RandomCriterion",
    "ShapiroWilkAllocation",
    "TargetAllocation",
    "TrainingSpec",
    "TransformerBlock",
    "allocation",
    "allocation_names",
    "attention",
    "auto_pivots",
    "channel_groups",
    "compress",
    "criterion_names",
    "data",
    "decompose",
    "errors",
    "factor_for_macs",
    "filter_matrix",
    "fit_distributed",
    "fixed_blocks",
    "get_allocation",
    "get_criterion",
    "jarque_bera",
    "kstat",
    "kurtosis",
    "latency",
    "layer_rules",
    "mask_model",
    "measure_latency",
    "models",
    "pivot_weights",
    "plan_pruning",
    "profile",
    "recalibrate_batchnorm",
    "register_activation",
    "register_allocation",
    "register_criterion",
    "register_layer_rule",
    "score_filters",
    "shapiro_wilk",
    "skew",
    "slim_model",
    "specs",
    "training",
    "transformer_blocks",
    "tuner",
    "uniform_plan",
    "weight_masks",
]
