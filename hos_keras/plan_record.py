"""The pruning plan: which channels of which groups a model keeps.

`GroupPlan` and `PruningPlan` are plain records. The planner
(`hos_keras.plan.plan_pruning`) writes them; surgery, masking, distillation,
reports and the command line only read them, and import this module rather than
the planner. A plan serializes to JSON and back exactly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hos_keras.errors import InvalidArgumentError
from hos_keras.text import allocation_label, plural, statistic_cell, table

__all__ = ["GroupPlan", "PruningPlan"]

_FORMAT = "hos_keras.PruningPlan"
_VERSION = 2


@dataclasses.dataclass(eq=False)
class GroupPlan:
    """The plan for one group of coupled channels (see `hos_keras.channel_groups`).

    Attributes:
        name: The group's name (its first producer's name).
        producers: Layers whose filters produce the group's channels.
        channels: Channels of the group before pruning.
        keep: Sorted indices of the group channels kept (int64 array).
        ratio: The ratio the allocation asked for (the kept count also respects
            `min_channels` and `round_to`); `0.0` for a group out of `scope` or
            in `skip`; in progressive pruning, `1 - kept / channels` where earlier
            steps had removed more than the step asked.
        statistic: The layer statistic T of P1-P3 allocations, else `None`.
        scores: Score of every group channel: the producers' filter scores
            combined (mean by default).
        members: Every layer that loses weight slices when the group is pruned
            (producers, per-channel layers, consumers).
    """

    name: str
    producers: tuple[str, ...]
    channels: int
    keep: np.ndarray
    ratio: float
    statistic: float | None
    scores: np.ndarray
    members: tuple[str, ...] = ()

    @property
    def pruned(self) -> np.ndarray:
        """Sorted indices of the group channels removed."""
        return np.setdiff1d(np.arange(self.channels), self.keep)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "producers": list(self.producers),
            "channels": int(self.channels),
            "keep": [int(i) for i in self.keep],
            "ratio": float(self.ratio),
            "statistic": None if self.statistic is None else float(self.statistic),
            "scores": [float(v) for v in self.scores],
            "members": list(self.members),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> GroupPlan:
        return cls(
            name=str(data["name"]),
            producers=tuple(str(p) for p in data["producers"]),
            channels=int(data["channels"]),
            keep=np.asarray(data["keep"], dtype=np.int64),
            ratio=float(data["ratio"]),
            statistic=None if data["statistic"] is None else float(data["statistic"]),
            scores=np.asarray(data["scores"], dtype=np.float64),
            members=tuple(str(m) for m in data.get("members", ())),
        )


@dataclasses.dataclass(eq=False)
class PruningPlan:
    """Which channels of which layers to prune, and what it saves.

    Attributes:
        model_name: Name of the model the plan was made for.
        criterion: Name of the filter criterion.
        allocation: Name of the allocation.
        allocation_config: The allocation's arguments.
        groups: `{group_name: GroupPlan}` for the prunable groups, in graph order.
        frozen: `{group_name: reason}` for the groups that cannot be pruned.
        params_before, params_after, macs_before, macs_after: Integer totals (see
            `hos_keras.profile` for the convention).
        details: What the allocation reports (T_min, T_max, the coefficient found
            by a target search, the achieved MACs reduction, ...).

    Example:

    ```python
    plan = hos_keras.plan_pruning(model, criterion="k34", allocation="shapiro",
                                  coefficient=3.7)
    plan.summary()
    text = plan.to_json()
    assert hos_keras.PruningPlan.from_json(text) == plan
    ```
    """

    model_name: str
    criterion: str
    allocation: str
    allocation_config: dict
    groups: dict[str, GroupPlan]
    frozen: dict[str, str]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def macs_reduction(self) -> float:
        """Fraction of the MACs removed."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def params_reduction(self) -> float:
        """Fraction of the parameters removed."""
        if not self.params_before:
            return 0.0
        return 1.0 - self.params_after / self.params_before

    def __getitem__(self, name: str) -> GroupPlan:
        return self.groups[name]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PruningPlan):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def to_dict(self) -> dict:
        """The plan as JSON-compatible Python data."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "model_name": self.model_name,
            "criterion": self.criterion,
            "allocation": self.allocation,
            "allocation_config": self.allocation_config,
            "groups": [plan.to_dict() for plan in self.groups.values()],
            "frozen": dict(self.frozen),
            "params_before": int(self.params_before),
            "params_after": int(self.params_after),
            "macs_before": int(self.macs_before),
            "macs_after": int(self.macs_after),
            "details": self.details,
        }

    def to_json(self, indent: int | None = None) -> str:
        """Serializes the plan; `PruningPlan.from_json` restores it exactly."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningPlan:
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise InvalidArgumentError(
                "The data is not a hos_keras pruning plan (missing "
                f"'format': {_FORMAT!r}); pass the output of PruningPlan.to_json()."
            )
        if data.get("version") != _VERSION:
            raise InvalidArgumentError(
                f"Pruning plan version {data.get('version')!r} is not supported; "
                f"this hos_keras reads version {_VERSION}."
            )
        try:
            groups = [GroupPlan.from_dict(entry) for entry in data["groups"]]
            return cls(
                model_name=str(data["model_name"]),
                criterion=str(data["criterion"]),
                allocation=str(data["allocation"]),
                allocation_config=dict(data["allocation_config"]),
                groups={plan.name: plan for plan in groups},
                frozen=dict(data["frozen"]),
                params_before=int(data["params_before"]),
                params_after=int(data["params_after"]),
                macs_before=int(data["macs_before"]),
                macs_after=int(data["macs_after"]),
                details=dict(data.get("details", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"Malformed pruning plan: {type(error).__name__}: {error}."
            ) from None

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Restores a plan written by `to_json`.

        Raises:
            InvalidArgumentError: if the text is not a valid plan.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(
                f"Cannot parse the pruning plan as JSON: {error}."
            ) from None
        return cls.from_dict(data)

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Prints a per-layer table and the totals before and after pruning.

        Args:
            print_fn: Function called with each line. Defaults to `print`.
        """
        print_fn = print_fn or print
        allocation = allocation_label(self.allocation, self.allocation_config)
        print_fn(
            f"Pruning plan for {self.model_name!r}: criterion={self.criterion}, "
            f"allocation={allocation}"
        )
        rows = [
            (
                plan.name,
                plan.channels,
                len(plan.keep),
                f"{plan.ratio:.2f}",
                statistic_cell(plan.statistic),
                f"{float(np.min(plan.scores)):.3g}",
                f"{float(np.median(plan.scores)):.3g}",
            )
            for plan in self.groups.values()
        ]
        headers = ("layer", "channels", "kept", "ratio", "T", "score min", "score med")
        lines = table(headers, rows)
        for line in [*lines, lines[1]]:
            print_fn(line)
        print_fn(
            f"params: {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_reduction:.1%} fewer)"
        )
        print_fn(
            f"MACs:   {self.macs_before:,} -> {self.macs_after:,} "
            f"({self.macs_reduction:.1%} fewer)"
        )
        if self.frozen:
            print_fn(
                f"not pruned: {plural(len(self.frozen), 'channel group')} "
                "(see plan.frozen for the reasons)"
            )
