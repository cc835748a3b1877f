"""The errors hos_keras raises.

Every error derives from `HOSKerasError`, so `except hos_keras.errors.HOSKerasError`
catches all of them. Each also derives from the builtin that matches its nature
(`ValueError` for a bad value, `TypeError` for a bad kind of object), so code that
already catches those keeps working. `check_int` is the one integer-argument check
the modules share.
"""

import contextlib
import math
import numbers
import os


class HOSKerasError(Exception):
    """Base class of every error raised by hos_keras."""


class InvalidArgumentError(HOSKerasError, ValueError):
    """An argument has a value outside its valid range or set."""


class UnreachableTargetError(InvalidArgumentError):
    """A MACs or latency target cannot be met even by the most aggressive setting
    of the allocation (by the cost model's prediction)."""


class ArgumentTypeError(HOSKerasError, TypeError):
    """An argument is of the wrong kind (e.g. not callable, an unknown keyword)."""


class UnknownNameError(InvalidArgumentError):
    """A criterion, allocation or other registry name is not known."""


class NonFiniteWeightsError(HOSKerasError, ValueError):
    """A layer's weights contain NaN or Inf, so no statistic can be computed."""


class NothingToPruneError(HOSKerasError, ValueError):
    """The model has no layer whose output channels can be pruned."""


class UnsupportedModelError(HOSKerasError, TypeError):
    """The model is of a kind hos_keras cannot analyse (e.g. subclassed)."""


class PlanMismatchError(HOSKerasError, ValueError):
    """A pruning plan does not belong to the model it is applied to."""


class DatasetNotFoundError(HOSKerasError, FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says how to get it."""


class StageError(HOSKerasError, RuntimeError):
    """A stage of a pipeline (compress's planning, slimming, recalibration,
    distillation, fine-tuning, latency measurement, ...) failed on an error that
    is not hos_keras' own; `stage` names it and `__cause__` is the original.

    Attributes:
        stage: What the pipeline was doing, e.g. `"distillation"`.
    """

    def __init__(self, stage: str, error: BaseException):
        self.stage = stage
        super().__init__(f"Failed during {stage}: {type(error).__name__}: {error}")


@contextlib.contextmanager
def stage(name: str):
    """Names the pipeline stage of any error raised inside the block.

    A hos_keras error keeps its type (callers catch those by type) and gains a
    note naming the stage and a `stage` attribute; any other exception (a
    backend's, an out-of-memory) becomes a `StageError` chained to it.
    `KeyboardInterrupt` and other non-`Exception`s pass unchanged.
    """
    try:
        yield
    except StageError:
        raise
    except HOSKerasError as error:
        error.stage = name
        error.add_note(f"(raised during {name})")
        raise
    except Exception as error:
        raise StageError(name, error) from error


def check_int(name: str, value, minimum: int = 1, hint: str = "") -> int:
    """`value` as an int, or InvalidArgumentError naming `name` if it is not an
    integer (bools excluded) of at least `minimum`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise InvalidArgumentError(
            f"Received {name}={value!r}; pass an integer >= {minimum}{hint}."
        )
    return int(value)


def check_real(name: str, value, minimum: float = 0.0, hint: str = "") -> float:
    """`value` as a float, or InvalidArgumentError naming `name` if it is not a
    finite number (bools excluded) of at least `minimum`."""
    number = float("nan")
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if not math.isfinite(number) or number < minimum:
        raise InvalidArgumentError(
            f"Received {name}={value!r}; pass a finite number >= {minimum:g}{hint}."
        )
    return number


def directory_problem(path: str) -> tuple[str, str | None]:
    """The directory a file `path` would be written into, and what stops it:
    `None`, or a phrase such as "does not exist; create it (mkdir -p ...)"."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(directory) and not os.path.isdir(directory):
        return directory, f"{directory} is a file, not a directory"
    if not os.path.isdir(directory):
        return directory, (
            f"the directory {directory} does not exist; create it "
            f"(mkdir -p {directory}) or choose another path"
        )
    if not os.access(directory, os.W_OK):
        return directory, (
            f"the directory {directory} is not writable; choose another path"
        )
    return directory, None
