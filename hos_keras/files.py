"""Files hos_keras writes: whole or not at all.

Every file the library writes (models, plans, reports, figures, latency caches,
tuner artifacts) goes through `atomic_path`: the content is written to a
temporary file in the destination's directory, flushed to disk, then renamed
over the destination. A rename within one directory is atomic on POSIX and
Windows file systems, so a reader (or a run resumed after a crash, a kill or a
full disk) finds either the previous complete file or the new complete one,
never a truncated file under the final name. Two processes writing the same
path at once each rename a complete file into place; the last rename wins.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_path", "save_model", "save_weights", "write_bytes", "write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path to write; renamed over `path` when the block succeeds.

    The temporary file sits in `path`'s directory and keeps its suffix (Keras
    chooses the format from it: `.keras`, `.json`, `.png`). If the block raises
    (or the process dies), `path` is untouched and the temporary file is
    removed (or, after a kill, left under a hidden `.name.tmp-*` name, never
    under `path`).

    Args:
        path: The destination file.

    Yields:
        The temporary file's path, for a writer that takes a path.

    Example:

    ```python
    with atomic_path("slim.keras") as temporary:
        model.save(temporary)
    ```
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    # Keep every suffix: Keras wants weights files to end in ".weights.h5".
    stem, dot, rest = base.partition(".")
    suffix = dot + rest
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{stem}.tmp-", suffix=suffix
    )
    os.close(handle)
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _fsync(path: str) -> None:
    """Flushes a written file to disk before it is renamed into place."""
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically (see `atomic_path`)."""
    with (
        atomic_path(path) as temporary,
        open(temporary, "w", encoding="utf-8") as stream,
    ):
        stream.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)


def save_model(model, path: str | os.PathLike) -> None:
    """`model.save(path)`, atomically (see `atomic_path`)."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def save_weights(model, path: str | os.PathLike) -> None:
    """`model.save_weights(path)` (a `.weights.h5` file), atomically."""
    with atomic_path(path) as temporary:
        model.save_weights(temporary)
