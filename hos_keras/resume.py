"""What a compress run has finished, on disk, so that a killed run resumes.

`compress(..., output_dir=DIR)` keeps a `RunRecord` in `DIR`:

- `progress.json`: the run's fingerprint (its arguments and a hash of the input
  model's weights), the evaluations done, the epochs trained, the history of
  each training stage so far;
- `plan.json`: the plan, written as soon as it is made; a resumed run reads it
  back and never plans again (a data-driven plan computed anew could differ);
- `student.keras`: the compressed student after slimming, decomposition and
  batch-norm recalibration, before any training;
- `checkpoint/`: after every finished epoch of distillation or fine-tuning, the
  student's weights and the optimizer's variables.

Every file is written atomically (`hos_keras.files`), the checkpoint before
`progress.json` names it, so a kill at any instant leaves a record that points
only at complete files. Called again with the same arguments, compress skips
what the record holds and continues from the last finished epoch with the
optimizer's state (momentum, step count) restored; its report covers the whole
run. With a `tf.data.Dataset` (or any data that gives the same batches in the
same order every epoch) and TensorFlow's op determinism, the resumed student
equals an uninterrupted run's bit for bit; arrays are shuffled by `fit` from
the global random state, so the epochs after a resume see other orders (the same
distribution, not the same numbers).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from hos_keras import files
from hos_keras.errors import InvalidArgumentError
from hos_keras.plan_record import PruningPlan

__all__ = ["RunRecord", "fingerprint"]

_FORMAT = "hos_keras.RunRecord"
_VERSION = 1


def _plain(value) -> Any:
    """A JSON-comparable description of an argument (objects by their config or
    type name, arrays by a hash)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=str)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return "array:" + hashlib.sha256(np.ascontiguousarray(value)).hexdigest()[:16]
    get_config = getattr(value, "get_config", None)
    if callable(get_config):
        try:
            return {"class": type(value).__name__, "config": _plain(get_config())}
        except (NotImplementedError, TypeError):
            pass
    return type(value).__qualname__


def fingerprint(model: keras.Model, arguments: Mapping[str, Any]) -> dict:
    """What identifies a run: the model (name, weight shapes, a hash of its
    weights) and the arguments that shape the result."""
    digest = hashlib.sha256()
    for weight in model.weights:
        values = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(str(values.shape).encode())
        digest.update(values.tobytes())
    return {
        "model": model.name,
        "weights": digest.hexdigest()[:32],
        "arguments": _plain(dict(arguments)),
    }


class RunRecord:
    """The finished parts of one compress run in a directory (see the module).

    Args:
        directory: The run's `output_dir`.
        identity: `fingerprint(model, arguments)` of this call.

    Raises:
        InvalidArgumentError: if `directory` holds the record of a run with other
            arguments or another model (resuming it would mix two runs).
    """

    def __init__(self, directory: str | os.PathLike, identity: dict):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, "progress.json")
        self.checkpoint_dir = os.path.join(self.directory, "checkpoint")
        data = self._read()
        if data is not None and data["fingerprint"] != identity:
            differs = sorted(
                key
                for key in set(identity) | set(data["fingerprint"])
                if identity.get(key) != data["fingerprint"].get(key)
            )
            raise InvalidArgumentError(
                f"Received output_dir={self.directory!r}, which holds an unfinished "
                f"or finished compress run of another {' and '.join(differs)}; "
                "call compress with the same model and arguments to resume it, or "
                "pass another output_dir (or delete its progress.json) to start anew."
            )
        self.resumed = data is not None
        self.data = data or {
            "format": _FORMAT,
            "version": _VERSION,
            "fingerprint": identity,
            "results": {},
            "history": {},
            "epochs_done": 0,
            "checkpoint": None,
            "student": False,
        }

    def _read(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as stream:
                data = json.load(stream)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise InvalidArgumentError(
                f"Cannot read {self.path} ({error}); it was not written by this "
                "version of hos_keras. Delete it to start the run anew."
            ) from None
        if data.get("format") != _FORMAT or data.get("version") != _VERSION:
            raise InvalidArgumentError(
                f"{self.path} is not a hos_keras run record of this version; "
                "delete it to start the run anew."
            )
        return data

    def save(self) -> None:
        """Writes `progress.json` (atomically)."""
        files.write_text(self.path, json.dumps(self.data, indent=1))

    # -- the plan -------------------------------------------------------------

    def plan(self) -> PruningPlan | None:
        """The plan a previous call recorded, or `None`."""
        if not self.data.get("planned"):
            return None
        with open(os.path.join(self.directory, "plan.json"), encoding="utf-8") as f:
            return PruningPlan.from_json(f.read())

    def record_plan(self, plan: PruningPlan) -> None:
        files.write_text(os.path.join(self.directory, "plan.json"), plan.to_json())
        self.data["planned"] = True
        self.save()

    # -- evaluations ------------------------------------------------------------

    def result(self, stage: str) -> dict | None:
        return self.data["results"].get(stage)

    def record_result(self, stage: str, metrics: Mapping[str, float]) -> None:
        self.data["results"][stage] = {k: float(v) for k, v in metrics.items()}
        self.save()

    # -- the compressed student before training ----------------------------------

    def student(self) -> keras.Model | None:
        """The student recorded before training, or `None`."""
        if not self.data["student"]:
            return None
        return keras.models.load_model(
            os.path.join(self.directory, "student.keras"), compile=False
        )

    def record_student(self, student: keras.Model) -> None:
        files.save_model(student, os.path.join(self.directory, "student.keras"))
        self.data["student"] = True
        self.save()

    # -- epochs -------------------------------------------------------------------

    @property
    def epochs_done(self) -> int:
        """Epochs of distillation and fine-tuning finished (counted across both)."""
        return int(self.data["epochs_done"])

    @property
    def history(self) -> dict:
        """The whole run's history so far: every finished epoch of each stage,
        across calls."""
        return {
            stage: {k: list(v) for k, v in logs.items()}
            for stage, logs in self.data["history"].items()
        }

    def restore(self, distiller) -> None:
        """Loads the last checkpoint's student weights into `distiller.student`."""
        if self.data["checkpoint"] is None:
            return
        distiller.student.load_weights(
            os.path.join(self.checkpoint_dir, "student.weights.h5")
        )

    def callback(self, stages: Mapping[str, int]) -> keras.callbacks.Callback:
        """The callback that records every finished epoch (see the module).

        Args:
            stages: `{"distill": epochs, "finetune": epochs}` of the whole run, to
                tell which stage an epoch belongs to.
        """
        return _EpochRecorder(self, stages)


class _EpochRecorder(keras.callbacks.Callback):
    """Saves the student and the optimizer after every epoch; restores the
    optimizer of an interrupted stage when training starts again."""

    def __init__(self, record: RunRecord, stages: Mapping[str, int]):
        super().__init__()
        self.record = record
        self.distill_epochs = int(stages.get("distill", 0))

    def _stage(self, epoch: int) -> str:
        return "distill" if epoch < self.distill_epochs else "finetune"

    def on_train_begin(self, logs=None):
        checkpoint = self.record.data["checkpoint"]
        if checkpoint is None:
            return
        done = self.record.epochs_done
        # The interrupted stage goes on with its optimizer's state; a stage that
        # starts fresh (the checkpoint ended the previous one) gets a new one.
        if checkpoint["stage"] != self._stage(done):
            return
        optimizer = self.model.optimizer
        optimizer.build(self.model.trainable_variables)
        with np.load(os.path.join(self.record.checkpoint_dir, "optimizer.npz")) as f:
            saved = [f[f"v{i}"] for i in range(len(f.files))]
        if len(saved) != len(optimizer.variables):
            raise InvalidArgumentError(
                f"The checkpoint in {self.record.checkpoint_dir} holds "
                f"{len(saved)} optimizer variables but the optimizer has "
                f"{len(optimizer.variables)}; delete the directory's "
                "progress.json to start anew."
            )
        for variable, value in zip(optimizer.variables, saved, strict=True):
            variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        record = self.record
        os.makedirs(record.checkpoint_dir, exist_ok=True)
        files.save_weights(
            self.model.student,
            os.path.join(record.checkpoint_dir, "student.weights.h5"),
        )
        values = {
            f"v{i}": keras.ops.convert_to_numpy(v)
            for i, v in enumerate(self.model.optimizer.variables)
        }
        path = os.path.join(record.checkpoint_dir, "optimizer.npz")
        with files.atomic_path(path) as temporary, open(temporary, "wb") as stream:
            np.savez(stream, **values)
        stage = self._stage(epoch)
        logs = {k: float(v) for k, v in (logs or {}).items()}
        history = record.data["history"].setdefault(stage, {})
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        record.data["epochs_done"] = epoch + 1
        record.data["checkpoint"] = {"stage": stage, "epoch": epoch + 1}
        record.save()
