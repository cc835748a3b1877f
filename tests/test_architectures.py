"""Coverage: every keras.applications CNN family and keras-hub CNN backbones.

Each model is planned at a fixed ratio of 0.3, slimmed and checked against its
masked copy (`invariants.check_invariant`); a model only counts as covered when the
plan removes at least 15% of its MACs, so a model that freezes nearly everything
fails here.
"""

import keras
import pytest
import zoo
from invariants import check_invariant, check_reload, live_batchnorm

import hos_keras

MIN_MACS_REDUCTION = 0.15


def _covered(model, shape, seed=1, ratio=0.3):
    live_batchnorm(model)
    # ConvNeXt scales each block's branch by a LayerScale of 1e-6 at init: the
    # pruned channels would change the outputs by less than any tolerance.
    for layer in model._flatten_layers(include_self=False):
        if type(layer).__name__ == "LayerScale":
            for weight in layer.weights:
                weight.assign(keras.ops.ones(weight.shape))
    plan = hos_keras.plan_pruning(
        model, criterion="random", allocation="fixed", ratio=ratio, seed=seed
    )
    assert plan.macs_reduction >= MIN_MACS_REDUCTION, plan.frozen
    return plan, check_invariant(model, plan)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(zoo.APPLICATIONS))
def test_keras_applications_family_slims_exactly(family):
    keras.utils.set_random_seed(0)
    model, shape = zoo.application(family)
    if family == "ConvNeXtTiny":  # LayerNormalization over the channels freezes
        with pytest.warns(UserWarning, match="normalises over channels"):
            _covered(model, shape)
    else:
        _covered(model, shape)


@pytest.mark.slow
@pytest.mark.parametrize("family, ratio", [("MobileNetV2", 0.5), ("DenseNet121", 0.7)])
def test_keras_applications_at_a_high_ratio(family, ratio):
    keras.utils.set_random_seed(0)
    model, shape = zoo.application(family)
    # At 0.6 and above MobileNetV2's masked signal dies (batch-norm statistics
    # of the unpruned network) and the comparison loses its power.
    _covered(model, shape, seed=2, ratio=ratio)


def test_mobilenet_v3_keras_ops_nodes_are_traced_and_reload(tmp_path):
    """Hard-swish as `x + 3.0`, ReLU6 and `* (1/6)` ops: channels pass through."""
    keras.utils.set_random_seed(0)
    model, shape = zoo.application("MobileNetV3Small")
    graph = hos_keras.channel_groups(model)
    assert not hos_keras.graph.frozen_by_reason(graph.groups)
    plan, slim = _covered(model, shape)
    check_reload(slim, model, plan, tmp_path / "slim.keras", seed=3)


def test_convnext_freezes_only_the_layer_normalised_stream():
    keras.utils.set_random_seed(0)
    model, _ = zoo.application("ConvNeXtTiny")
    graph = hos_keras.channel_groups(model, warn=False)
    reasons = hos_keras.graph.frozen_by_reason(graph.groups)
    assert list(reasons) == ["normalises over channels"]
    # The expansion Dense of every block is prunable; LayerScale follows it.
    prunable = {g.name for g in graph.prunable}
    assert "convnext_tiny_stage_0_block_0_pointwise_conv_1" in prunable


@pytest.mark.slow
@pytest.mark.parametrize("family", zoo.HUB_FAMILIES)
def test_keras_hub_backbone_slims_exactly_and_reloads(family, tmp_path):
    keras.utils.set_random_seed(0)
    model, shape = zoo.hub_classifier(family)
    plan, slim = _covered(model, shape)
    # Functional subclasses come back as plain functional models.
    assert all(
        type(layer) in (keras.Model, keras.Sequential)
        or not isinstance(layer, keras.Model)
        or type(layer).__name__ == "Functional"
        for layer in slim.layers
    )
    check_reload(slim, model, plan, tmp_path / "slim.keras", seed=4)


@pytest.mark.slow
def test_keras_hub_backbone_and_task_as_the_model(tmp_path):
    """A functional subclass given directly: rebuilt as a plain functional model."""
    from keras_hub.models import ResNetImageClassifier

    keras.utils.set_random_seed(0)
    backbone, shape = zoo.hub_classifier("ResNetBackbone")
    backbone = backbone.layers[1]
    task = ResNetImageClassifier(backbone=backbone, num_classes=10, preprocessor=None)
    for model in (backbone, task):
        plan, slim = _covered(model, shape)
        assert type(slim).__name__ == "Functional"
        check_reload(slim, model, plan, tmp_path / f"{model.name}.keras")
