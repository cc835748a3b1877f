"""The table-driven cost model against a plain recount on real architectures.

`ChannelCounter.counts` is checked against the definition written out here with
numpy set operations (a position survives when its channel class is not among
the classes of the channels removed), and `CostCounter.cost` against
`hos_keras.profile` with those counts, for random keeps of every group, on the
coverage test's keras.applications families; on one model per run also against
the profile of the slim model itself. Equal counts and costs give equal plans:
every allocation and target search reads only these.
"""

import keras
import numpy as np
import pytest
import tiny
import zoo

import hos_keras
from hos_keras import layer_rules
from hos_keras.cost_model import CostCounter


def _reference_counts(channel_graph, keeps):
    """Kept positions per layer by set membership, as the definition says."""
    removed = np.concatenate(
        [
            channel_graph.classes[name][
                np.setdiff1d(np.arange(len(channel_graph.classes[name])), keep)
            ]
            for name, keep in keeps.items()
        ]
        or [np.zeros(0, np.int64)]
    )
    counts = []
    for table in (channel_graph.inputs, channel_graph.outputs, channel_graph.tensors):
        kept = {}
        for name, classes in table.items():
            alive = int(np.count_nonzero(~np.isin(classes, removed)))
            if alive != len(classes):
                kept[name] = alive
        counts.append(kept)
    in_channels, out_channels, tensors = counts
    for name, count in in_channels.items():
        layer = channel_graph.layers[name]
        rule = layer_rules.get_rule(layer)
        if rule is not None and not rule.creates(layer):
            out_channels[name] = rule.passed(layer, count)
    return in_channels, out_channels, tensors


def _random_keeps(channel_graph, rng, share=1.0):
    keeps = {}
    for group in channel_graph.prunable:
        if rng.random() > share:
            continue
        count = int(rng.integers(1, group.channels + 1))
        keeps[group.name] = np.sort(rng.choice(group.channels, count, replace=False))
    return keeps


def _check(model, seed=0, draws=3):
    channel_graph = hos_keras.channel_groups(model, warn=False)
    counter = CostCounter(model, channel_graph)
    full = hos_keras.profile(model)
    assert (counter.params, counter.macs) == (full["params"], full["macs"])
    rng = np.random.default_rng(seed)
    for share in (1.0, 0.3)[:draws]:
        keeps = _random_keeps(channel_graph, rng, share)
        expected = _reference_counts(channel_graph, keeps)
        got = counter.channels.counts(keeps)
        assert got == expected
        cost = hos_keras.profile(model, expected[0], expected[1])
        assert counter.cost(keeps) == {"params": cost["params"], "macs": cost["macs"]}
    return channel_graph, counter


def test_counts_and_costs_on_small_models_and_the_slim_model_itself():
    for model in (tiny.cnn(), tiny.residual_cnn(), hos_keras.models.resnet20()):
        _check(model)
    model = hos_keras.models.cifar_mobilenet_v2(input_shape=(16, 16, 3), alpha=0.35)
    _, counter = _check(model)
    plan = hos_keras.plan_pruning(
        model, criterion="random", allocation="fixed", ratio=0.4, seed=1
    )
    slim = hos_keras.profile(hos_keras.slim_model(model, plan))
    keeps = {name: group.keep for name, group in plan.groups.items()}
    assert counter.cost(keeps) == {"params": slim["params"], "macs": slim["macs"]}
    assert (plan.params_after, plan.macs_after) == (slim["params"], slim["macs"])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(zoo.APPLICATIONS))
def test_counts_and_costs_on_every_keras_applications_family(family):
    keras.utils.set_random_seed(0)
    model, _ = zoo.application(family)
    _check(model, seed=len(family))
