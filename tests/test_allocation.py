"""Allocations as objects: the knob a target search turns, user-registered
allocations, config round trips, and `for_target`."""

import keras
import pytest
import tiny

import hos_keras
from hos_keras import allocation
from hos_keras.errors import InvalidArgumentError, UnknownNameError


def _reduction(model, name, **options):
    return hos_keras.plan_pruning(model, "l1", name, **options).macs_reduction


@pytest.mark.parametrize(
    "base, knob, less_pruning",
    [
        # eq. 9's c: larger prunes less
        ("shapiro", "coefficient", lambda v, total: {"coefficient": v * 1.02}),
        # the number of filters removed, one fewer
        ("global", "fraction", lambda v, total: {"fraction": v - 1 / total}),
        # one uniform ratio, a little lower
        ("fixed", "ratio", lambda v, total: {"ratio": v - 0.02}),
    ],
)
def test_target_search_finds_the_least_pruning_that_reaches_the_target(
    cnn, base, knob, less_pruning
):
    target = 0.35
    plan = hos_keras.plan_pruning(cnn, "l1", "target", base=base, macs_reduction=target)
    value = plan.details[knob]
    assert plan.details["base"] == base
    assert plan.macs_reduction >= target
    # The same allocation with the knob's value found reaches it ...
    assert _reduction(cnn, base, **{knob: value}) >= target
    # ... and a little less pruning does not.
    total = sum(g.channels for g in hos_keras.channel_groups(cnn).prunable)
    assert _reduction(cnn, base, **less_pruning(value, total)) < target


class _Share(allocation.Allocation):
    """The same ratio everywhere, with that ratio as its knob."""

    name = "test_share"

    def __init__(self, share=0.5):
        self.share = share

    def allocate(self, context):
        return allocation.Allocated({n: self.share for n in context.layers})

    def knob(self, context):
        return allocation.Knob(
            "share", 0.0, 0.9, lambda s: {n: s for n in context.layers}
        )

    def get_config(self):
        return {"share": self.share}


@pytest.fixture
def registered():
    allocation.register_allocation(_Share)
    yield _Share
    del allocation._ALLOCATIONS[_Share.name]


def test_a_registered_allocation_is_found_by_name_and_can_be_a_target_base(
    cnn, registered
):
    assert "test_share" in hos_keras.allocation_names()
    plan = hos_keras.plan_pruning(cnn, "l1", "test_share", share=0.25)
    assert {round(g.ratio, 2) for g in plan.groups.values()} <= {0.25, 0.0}
    target = hos_keras.plan_pruning(
        cnn, "l1", "target", base="test_share", macs_reduction=0.4
    )
    share = target.details["share"]
    assert target.macs_reduction >= 0.4
    assert _reduction(cnn, "test_share", share=share) >= 0.4
    assert _reduction(cnn, "test_share", share=share - 0.02) < 0.4
    with pytest.raises(InvalidArgumentError, match="exists already"):
        allocation.register_allocation(_Share)


def test_register_allocation_refuses_what_is_not_an_allocation():
    with pytest.raises(InvalidArgumentError, match="subclass of hos_keras.Allocation"):
        allocation.register_allocation(dict)

    class Nameless(allocation.Allocation):
        pass

    with pytest.raises(InvalidArgumentError, match="no name of its own"):
        allocation.register_allocation(Nameless)


def test_an_allocation_without_a_knob_cannot_be_a_target_base():
    with pytest.raises(UnknownNameError, match="with a knob"):
        allocation.TargetAllocation(base="itpruner")


@pytest.mark.parametrize(
    "name, options",
    [
        ("shapiro", {"coefficient": 2.5, "step": 0.05}),
        ("jarque_bera", {}),
        ("k34", {"max_ratio": 0.7}),
        ("global", {"fraction": 0.2}),
        ("fixed", {"ratio": {"c1": 0.5, "c*": 0.25}}),
        ("target", {"base": "global", "macs_reduction": 0.3}),
        ("itpruner", {"macs_reduction": 0.4, "beta": 2.0}),
    ],
)
def test_from_config_round_trips(name, options):
    made = hos_keras.get_allocation(name, **options)
    again = type(made).from_config(made.get_config())
    assert type(again) is type(made)
    assert again.get_config() == made.get_config()


def test_for_target_is_the_one_place_targets_become_allocations():
    plain = allocation.for_target("global", fraction=0.2)
    assert isinstance(plain, allocation.GlobalAllocation) and plain.fraction == 0.2
    searched = allocation.for_target("k34", 0.3, max_ratio=0.8)
    assert isinstance(searched, allocation.TargetAllocation)
    assert searched.get_config() == {
        "macs_reduction": 0.3,
        "base": "k34",
        "max_ratio": 0.8,
    }
    latency = allocation.for_target("target", None, 0.4, base="global")
    assert latency.get_config() == {"latency_reduction": 0.4, "base": "global"}
    itpruner = allocation.for_target("itpruner", 0.5, beta=2.0)
    assert isinstance(itpruner, allocation.ITPrunerAllocation)
    assert itpruner.get_config()["macs_reduction"] == 0.5
    with pytest.raises(InvalidArgumentError, match="--target=0.3 and --latency"):
        allocation.for_target(
            "shapiro", 0.3, 0.3, names=("--target", "--latency-target")
        )
    with pytest.raises(InvalidArgumentError, match="base allocation by name"):
        allocation.for_target(allocation.GlobalAllocation(0.2), 0.3)


def test_compress_takes_allocation_target_with_a_target(cnn):
    # allocation="target" with target= searches over shapiro, as the CLI does.
    x, y = tiny.images(16, (10, 10, 3), classes=10)
    _, report = hos_keras.compress(
        cnn,
        (x, y),
        (x, y),
        allocation="target",
        target=0.3,
        criterion="l1",
        distill_epochs=0,
        finetune_epochs=0,
        recalibration_steps=0,
        latency_batch_sizes=(),
        tflite_latency=False,
        verbose=0,
    )
    assert report.details["base"] == "shapiro"
    assert 1 - report.macs["slim"] / report.macs["original"] >= 0.3
    keras.backend.clear_session()
