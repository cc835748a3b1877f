"""Architectures covered: what share of each model's MACs hos_keras can prune.

For every keras.applications CNN family (weights=None), the keras-hub CNN
backbones the coverage tests use (random weights, in a small classifier) and the
keras-hub transformer backbones of tests/zoo.py (tiny random configs, the
backbone alone; MACs of one position where the sequence length is unknown, as
profile counts them), this reports:

- the share of the model's MACs in layers whose input or output channels belong
  to a prunable group (MACs that pruning reduces), and in layers whose output
  channels do (producers of prunable groups and the depthwise layers they feed);
- the MACs removed by a fixed ratio of 0.3 on every prunable group;
- the channel groups frozen, by reason and place (model outputs left out), and
  the layers with weights hos_keras cannot look into (untraceable blocks);
- the time to trace the graph and make the plan.

It measures coverage, not speed: the times are for orientation only.

Run: .venv/bin/python bench/architectures.py   (writes bench/results/architectures.json
and prints the README's table); with --transformers, only the transformer backbones
(writes bench/results/architectures_transformers.json).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import keras

import hos_keras
from hos_keras import graph as graph_lib
from hos_keras import layer_rules
from hos_keras.errors import NothingToPruneError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import zoo

RESULTS = Path(__file__).parent / "results" / "architectures.json"


def _measure(name: str, model: keras.Model) -> dict:
    start = time.perf_counter()
    channel_graph = hos_keras.channel_groups(model, warn=False)
    members = {m for g in channel_graph.prunable for m in g.members}
    makers = {p for g in channel_graph.prunable for p in g.producers} | {
        m
        for m in members
        if not layer_rules.get_rule(channel_graph.layers[m]).creates(
            channel_graph.layers[m]
        )
    }
    cost = hos_keras.profile(model)

    def share(names):
        macs = sum(e["macs"] for k, e in cost["layers"].items() if k in names)
        return macs / max(cost["macs"], 1)

    reduction = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            plan = hos_keras.plan_pruning(
                model, criterion="l1", allocation="fixed", ratio=0.3
            )
            reduction = plan.macs_reduction
        except NothingToPruneError:
            pass
    seconds = time.perf_counter() - start
    return {
        "model": name,
        "macs": cost["macs"],
        "params": cost["params"],
        "groups": len(channel_graph.groups),
        "prunable_groups": len(channel_graph.prunable),
        "prunable_macs_share": share(members),
        "prunable_output_macs_share": share(makers),
        "macs_reduction_at_0.3": reduction,
        "frozen": {
            **graph_lib.frozen_by_reason(channel_graph.groups),
            **_opaque(model),
        },
        "plan_seconds": seconds,
    }


def _opaque(model: keras.Model) -> dict:
    """`{reason: [where, ...]}` of the layers with weights that have no rule and
    no view (hos_keras neither prunes them nor looks inside), by the reason
    graph.layer_view gives."""
    found: dict[str, list[str]] = {}
    for call in graph_lib.iter_calls(model):
        op = call.operation
        if call.rule is not None or not isinstance(op, keras.layers.Layer):
            continue
        if not op.weights:
            continue
        reason = graph_lib.layer_view(op, call.node)
        if isinstance(reason, str):
            where = f"{call.name!r} ({type(op).__name__})"
            found.setdefault(f"not looked into: {reason}", []).append(where)
    return found


def _frozen_text(frozen: dict) -> str:
    if not frozen:
        return "only the output layer's channels"
    parts = []
    for what, places in frozen.items():
        layer_types = sorted({p.rsplit("(", 1)[-1].rstrip(")") for p in places})
        parts.append(f"{what} ({len(places)}: {', '.join(layer_types)})")
    return "; ".join(parts)


def main() -> None:
    transformers_only = "--transformers" in sys.argv[1:]
    results = RESULTS.with_name("architectures_transformers.json")
    if not transformers_only:
        results = RESULTS
    rows = []
    for family in () if transformers_only else zoo.APPLICATIONS:
        keras.backend.clear_session()
        model, _ = zoo.application(family)
        rows.append(_measure(f"keras.applications.{family}", model))
        print(rows[-1]["model"], f"{rows[-1]['prunable_macs_share']:.1%}", flush=True)
    for family in () if transformers_only else zoo.HUB_FAMILIES:
        keras.backend.clear_session()
        model, _ = zoo.hub_classifier(family)
        rows.append(_measure(f"keras_hub {family}", model))
        print(rows[-1]["model"], f"{rows[-1]['prunable_macs_share']:.1%}", flush=True)
    for family in zoo.HUB_TRANSFORMERS:
        keras.backend.clear_session()
        rows.append(_measure(f"keras_hub {family}", zoo.hub_transformer(family)))
        print(rows[-1]["model"], f"{rows[-1]['prunable_macs_share']:.1%}", flush=True)
    results.parent.mkdir(exist_ok=True)
    results.write_text(
        json.dumps(
            {
                "keras": keras.__version__,
                "hos_keras": hos_keras.__version__,
                "models": rows,
            },
            indent=2,
        )
    )
    print()
    print(
        "| model | MACs touching prunable channels | MACs making prunable channels "
        "| MACs removed at ratio 0.3 | frozen |"
    )
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['prunable_macs_share']:.1%} | "
            f"{row['prunable_output_macs_share']:.1%} | "
            f"{row['macs_reduction_at_0.3']:.1%} | {_frozen_text(row['frozen'])} |"
        )


if __name__ == "__main__":
    main()
