"""HOSPruneCallback: HOS pruning inside a user's own `model.fit`.

At the end of each listed epoch the callback scores the current weights, lets the
allocation decide the ratios, and masks the pruned channels in place; the masks are
re-applied after every training batch, so masked weights stay exactly zero whatever
the optimizer (momentum, Adam, weight decay) does. After training,
`callback.slim_model()` returns the physically smaller model. The callback only
orchestrates: scoring, allocation and surgery live in their own modules.

Chatzikonstantinou et al., "Neural Network Compression Using Higher-Order
Statistics and Auxiliary Reconstruction Losses", CVPRW 2020.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import keras
import numpy as np

from hos_keras import graph, surgery
from hos_keras.errors import InvalidArgumentError
from hos_keras.plan import PruningPlan, plan_pruning, restrict_plan

__all__ = ["HOSPruneCallback"]


def _writable_directory(path: str) -> str:
    """The directory of `path`, checked to exist and be writable."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise InvalidArgumentError(
            f"Received plan_path={path!r}, but {directory!r} is not a writable "
            "directory; create it or choose another path."
        )
    return directory


def _write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    directory = _writable_directory(path)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".plan-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class HOSPruneCallback(keras.callbacks.Callback):
    """Prunes channels at chosen epochs of `fit` by masking them to zero.

    Progressive pruning: give several epochs and, for the step sizes, a list for
    the allocation's main option (e.g. `ratio=[0.2, 0.4]` for `"fixed"` or
    `macs_reduction=[0.25, 0.5]` or `latency_reduction=[0.25, 0.5]` for
    `"target"`), one cumulative value per epoch. A latency target plans against a
    latency model of the model on `runtime=` (`hos_keras.latency`, built once and
    cached); the masked model is not re-timed at each step unless
    `verify_latency=True`.
    Channels masked once stay masked: each plan also removes what earlier plans
    removed, so `callback.plan` always describes every masked channel.

    Resuming: with `plan_path` set, a fit that starts after a pruning epoch (as
    with `keras.callbacks.BackupAndRestore`) reloads the plan and its masks.

    Args:
        prune_epochs: 1-based epochs (as fit prints them) at whose end to prune,
            strictly increasing.
        criterion: Filter criterion. Defaults to `"k34"`.
        allocation: Allocation name. Defaults to `"shapiro"`.
        plan_path: If set, the plan is written there (atomically) at every step.
            Defaults to `None`.
        log_dir: If set, TensorBoard summaries are written there at every step:
            scalars `hos/ratio/<group>`, `hos/statistic/<group>`,
            `hos/macs_reduction`, and histograms `hos/scores/<group>`. Defaults to
            `None`.
        verbose: Print a line per pruning step. Defaults to `1`.
        **allocation_options: Passed to `plan_pruning`; a list value is read as
            one value per pruning epoch.

    Raises:
        InvalidArgumentError: for an empty, unsorted or non-positive
            `prune_epochs`, or a per-step list of the wrong length.

    Example:

    ```python
    callback = hos_keras.HOSPruneCallback(prune_epochs=[2, 4], allocation="target",
                                          macs_reduction=[0.25, 0.5])
    model.fit(train, epochs=6, callbacks=[callback])
    small = callback.slim_model()
    ```
    """

    def __init__(
        self,
        prune_epochs: Sequence[int],
        criterion="k34",
        allocation="shapiro",
        plan_path: str | None = None,
        log_dir: str | None = None,
        verbose: int = 1,
        **allocation_options,
    ):
        super().__init__()
        epochs = list(prune_epochs)
        if (
            not epochs
            or any(
                not isinstance(e, int) or isinstance(e, bool) or e < 1 for e in epochs
            )
            or epochs != sorted(set(epochs))
        ):
            raise InvalidArgumentError(
                f"Received prune_epochs={prune_epochs!r}; pass a non-empty, strictly "
                "increasing list of 1-based epoch numbers, e.g. [2, 4]."
            )
        for key, value in allocation_options.items():
            if isinstance(value, list | tuple) and len(value) != len(epochs):
                raise InvalidArgumentError(
                    f"Received {key}={value!r} with {len(value)} values for "
                    f"{len(epochs)} pruning epochs; give one value per epoch."
                )
        if plan_path is not None:
            _writable_directory(plan_path)
        self.prune_epochs = epochs
        self.criterion = criterion
        self.allocation = allocation
        self.allocation_options = allocation_options
        self.plan_path = plan_path
        self.log_dir = log_dir
        self._writer = None
        self.verbose = verbose
        self.plan: PruningPlan | None = None
        self._masks: dict[str, list[np.ndarray]] = {}

    def on_train_begin(self, logs=None):
        planned = getattr(self.params, "get", lambda *_: None)("epochs")
        if planned is not None and self.prune_epochs[-1] > planned:
            raise InvalidArgumentError(
                f"prune_epochs={self.prune_epochs} goes beyond the {planned} epochs "
                "of this fit; prune earlier or train longer."
            )

    def on_epoch_begin(self, epoch, logs=None):
        # A fit that starts after a pruning epoch is a resumed one (e.g. through
        # keras.callbacks.BackupAndRestore): recover the masks from plan_path.
        if (
            self.plan is None
            and self.plan_path
            and os.path.exists(self.plan_path)
            and any(e <= epoch for e in self.prune_epochs)
        ):
            with open(self.plan_path, encoding="utf-8") as stream:
                self.plan = PruningPlan.from_json(stream.read())
            self._masks = surgery.weight_masks(self.model, self.plan)
            self._apply_masks()

    def _options_for(self, step: int) -> dict:
        return {
            key: value[step] if isinstance(value, list | tuple) else value
            for key, value in self.allocation_options.items()
        }

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 not in self.prune_epochs:
            return
        step = self.prune_epochs.index(epoch + 1)
        options = self._options_for(step)
        if "latency_reduction" in options:
            options.setdefault("verify_latency", False)
        plan = plan_pruning(
            self.model,
            criterion=self.criterion,
            allocation=self.allocation,
            **options,
        )
        if self.plan is not None:
            # Cumulative: channels masked at earlier steps stay pruned.
            plan = restrict_plan(self.model, plan, self.plan)
        self._masks = surgery.weight_masks(self.model, plan)
        self._apply_masks()
        self.plan = plan
        if self.plan_path:
            _write_atomically(self.plan_path, plan.to_json())
        if self.log_dir:
            self._summarize(plan, epoch + 1)
        if logs is not None:
            logs["pruned_macs_reduction"] = plan.macs_reduction
            for group in plan.groups.values():
                logs[f"ratio/{group.name}"] = group.ratio
        if self.verbose:
            print(
                f"\nHOSPruneCallback: epoch {epoch + 1}: {plan.macs_reduction:.1%} "
                f"fewer MACs ({plan.macs_before:,} -> {plan.macs_after:,})"
            )

    def _summarize(self, plan: PruningPlan, step: int) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=step):
            tf.summary.scalar("hos/macs_reduction", plan.macs_reduction)
            for group in plan.groups.values():
                tf.summary.scalar(f"hos/ratio/{group.name}", group.ratio)
                if group.statistic is not None:
                    tf.summary.scalar(f"hos/statistic/{group.name}", group.statistic)
                tf.summary.histogram(f"hos/scores/{group.name}", group.scores)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_train_batch_end(self, batch, logs=None):
        if self._masks:
            self._apply_masks()

    def _apply_masks(self) -> None:
        for name, masks in self._masks.items():
            layer = graph.get_layer(self.model, name)
            for variable, mask in zip(layer.weights, masks, strict=True):
                if not mask.all():
                    variable.assign(variable.numpy() * mask)

    def slim_model(self) -> keras.Model:
        """The physically smaller model of the last plan, with the trained weights.

        Raises:
            InvalidArgumentError: if no pruning step has run yet.
        """
        if self.plan is None:
            raise InvalidArgumentError(
                "No pruning step has run yet: train past the first of "
                f"prune_epochs={self.prune_epochs} first."
            )
        return surgery.slim_model(self.model, self.plan)
