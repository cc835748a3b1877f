"""Quiet start for the command-line tool and the recipes, and quiet interpreters.

TensorFlow's C++ runtime writes lines such as "oneDNN custom operations are on",
"Could not find cuda drivers" and an ERROR-level "failed call to cuInit" straight
to the process's standard error when it is imported and when it first looks for
devices; `TF_CPP_MIN_LOG_LEVEL` does not silence the ones written before its
logging starts; the TFLite interpreter announces its XNNPACK delegate each time
one is made, and the converter writes lines such as "Ignored output_format." on
every conversion. Nothing here imports TensorFlow before `quiet_import` does.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# absl's log prefix: severity, date, time, thread, file:line]
_ABSL = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ")
_CHATTER = (
    "WARNING: All log messages before absl::InitializeLog() is called",
    "To enable the following instructions:",
    "INFO: Created TensorFlow Lite XNNPACK delegate",  # each new interpreter
)


def wanted() -> bool:
    """Whether this process is `hos-keras` or a recipe, without `--verbose`."""
    if "--verbose" in sys.argv[1:] or os.environ.get("HOS_KERAS_VERBOSE"):
        return False
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return program == "hos-keras" or os.environ.get("HOS_KERAS_QUIET") == "1"


def chatter(line: str) -> bool:
    """Whether a line of standard error is TensorFlow's startup chatter."""
    return bool(_ABSL.match(line)) or line.startswith(_CHATTER)


@contextlib.contextmanager
def hidden_chatter():
    """Captures standard error (the file descriptor, which C++ writes to) for
    the block, then writes again every line that is not TensorFlow's chatter;
    if the block raises, every line is written again (they may explain why)."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if failed or not chatter(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def quiet_import() -> None:
    """Imports TensorFlow and finds its devices with its C++ startup lines hidden;
    any other line written meanwhile is written again afterwards."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with hidden_chatter():
        import tensorflow as tf

        tf.config.list_physical_devices()
