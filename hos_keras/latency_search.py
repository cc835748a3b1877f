"""The measured latency search: plans timed on the runtime until one meets its target.

A latency target is planned first from the latency model's prediction
(`hos_keras.latency`). `plan_pruning` then hands its plan, its allocation and
the function that turns an allocation into a plan to `measured_search`, which
slims the model, times both on the runtime and, when the measurement misses
the target, asks for another plan: from the latency model with the measured
difference added, then by a search over the MACs reduction between the plans
measured. Keeping it apart from both the planner and the latency model lets
each of them stay unaware of the other's internals.
"""

from __future__ import annotations

import math

from hos_keras import latency as latency_lib
from hos_keras.errors import InvalidArgumentError, UnreachableTargetError
from hos_keras.plan_record import PruningPlan

__all__ = ["measured_search"]


def measured_search(model, plan, allocator, assemble, latency_model, corrections):
    """Measures `plan` on the runtime and, for a latency target it misses (or
    beats by more than `_LATENCY_OVERSHOOT`), measures up to `corrections` more
    plans: first asking the latency model for the measured difference more (or
    less), then, once the model has no new widths to offer (or `plan` is `None`:
    it predicted the target unreachable), searching the MACs reduction between
    the measured plans. Returns the least pruned plan that met the target, else
    the most pruned one measured."""
    target = getattr(allocator, "latency_reduction", None)
    asked = target
    rounds, points = [], []  # points: (MACs reduction, measured reduction, plan)
    by_model = plan is not None
    while True:
        if plan is not None:
            info = plan.details["latency"]
            info.update(latency_lib.measure_plan(model, plan, latency_model))
            achieved = 1.0 - 1.0 / info["measured_speedup"]
            rounds.append(
                {
                    "search": "latency model" if by_model else "measured",
                    f"asked_{'latency' if by_model else 'macs'}_reduction": asked,
                    "macs_reduction": plan.macs_reduction,
                    "predicted_speedup": info["predicted_speedup"],
                    "measured_speedup": info["measured_speedup"],
                }
            )
            if target is None:
                return plan
            points.append((plan.macs_reduction, achieved, plan))
            difference = target - achieved
            if -_LATENCY_OVERSHOOT <= difference <= _LATENCY_TOLERANCE:
                break
        if len(rounds) > corrections:
            break
        retry = None
        if by_model:
            retry = _replan(plan, allocator, assemble, asked, difference)
        if retry is None:
            by_model = False
            retry = _next_by_macs(points, target, allocator, assemble)
        if retry is None:
            break
        plan, asked = retry
    met = [p for p in points if p[1] >= target - _LATENCY_TOLERANCE]
    if met:
        plan = min(met, key=lambda p: p[1])[2]
    elif points:
        plan = max(points, key=lambda p: p[1])[2]
    else:
        raise UnreachableTargetError(
            f"Cannot reach latency_reduction={target}: no plan of allocation="
            f"{allocator.name!r} could be measured. Ask for less."
        )
    plan.details["requested_latency_reduction"] = target
    plan.details["latency"]["rounds"] = rounds
    plan.details["latency"]["met"] = bool(met)
    return plan


def _replan(plan, allocator, assemble, asked, step):
    """The first plan, asking `step` more each time, whose widths differ from
    `plan`'s, with what it asked; `None` once the ask leaves (0, 0.99) or the
    target is unreachable."""
    while 0.0 < asked + step < 0.99:
        asked += step
        try:
            candidate = assemble(allocator.retarget(latency_reduction=asked))
        except InvalidArgumentError:
            return None
        if _same_widths(candidate, plan):
            continue
        return candidate, asked
    return None


def _next_by_macs(points, target, allocator, assemble):
    """The next plan of a measured search over the MACs reduction, with the MACs
    reduction asked; `None` when the search has nowhere left to go.

    `points` are the measured `(MACs reduction, latency reduction, plan)` so far.
    Between a plan that missed the target and one that met it, the next MACs
    reduction is interpolated linearly; beyond all of them it is extrapolated
    from the two nearest (slope 1 from one point, or from none: the target
    itself), in steps of at most `_MACS_STEP`.
    """
    low = max(
        (p for p in points if p[1] < target - _LATENCY_TOLERANCE),
        key=lambda p: p[0],
        default=None,
    )
    high = min(
        (p for p in points if p[1] >= target - _LATENCY_TOLERANCE),
        key=lambda p: p[0],
        default=None,
    )
    if low is None and high is None:
        guess = target
    elif low is not None and high is not None:
        if high[0] - low[0] <= _MACS_RESOLUTION:
            return None
        slope = (high[1] - low[1]) / max(high[0] - low[0], 1e-9)
        guess = low[0] + (target - low[1]) / max(slope, 1e-9)
        guess = min(
            max(guess, low[0] + _MACS_RESOLUTION / 2), high[0] - _MACS_RESOLUTION / 2
        )
    else:
        near = sorted(points, key=lambda p: p[0])
        near = near[-2:] if high is None else near[:2]
        end = near[-1] if high is None else near[0]
        slope = 1.0
        if len(near) == 2 and near[1][0] - near[0][0] > 1e-6:
            slope = max((near[1][1] - near[0][1]) / (near[1][0] - near[0][0]), 0.25)
        step = (target - end[1]) / slope
        step = math.copysign(min(max(abs(step), _MACS_RESOLUTION), _MACS_STEP), step)
        guess = end[0] + step
    guess = min(max(guess, 0.01), _MACS_MAX)
    if any(abs(guess - p[0]) < _MACS_RESOLUTION / 4 for p in points):
        return None
    try:
        candidate = assemble(allocator.retarget(macs_reduction=guess))
    except UnreachableTargetError:
        return None
    if any(_same_widths(candidate, p[2]) for p in points):
        return None
    return candidate, guess


def _same_widths(one: PruningPlan, other: PruningPlan) -> bool:
    return all(len(one[name].keep) == len(g.keep) for name, g in other.groups.items())


# A measured reduction this far below the target counts as met (timing noise);
# one more than _LATENCY_OVERSHOOT above it prunes more than asked: plan again.
_LATENCY_TOLERANCE = 0.01
_LATENCY_OVERSHOOT = 0.05
# The measured search over the MACs reduction: largest step beyond the measured
# plans, the closest two plans may be, and the most it asks for.
_MACS_STEP = 0.15
_MACS_RESOLUTION = 0.02
_MACS_MAX = 0.95
