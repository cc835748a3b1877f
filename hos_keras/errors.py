"""The errors hos_keras raises.

Every error derives from `HOSKerasError`, so `except hos_keras.errors.HOSKerasError`
catches all of them. Each also derives from the builtin that matches its nature
(`ValueError` for a bad value, `TypeError` for a bad kind of object), so code that
already catches those keeps working. `check_int` is the one integer-argument check
the modules share.
"""

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
