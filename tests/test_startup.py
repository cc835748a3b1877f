"""hos-keras and the recipes start without TensorFlow's C++ startup lines."""

import os
import subprocess
import sys
from pathlib import Path

import hos_keras
from hos_keras import _startup

# Lines this machine's TensorFlow writes at import and device discovery.
CHATTER = [
    (
        "WARNING: All log messages before absl::InitializeLog() is called are written "
        "to STDERR"
    ),
    (
        "I0000 00:00:1795708949.916558   14725 port.cc:153] oneDNN custom operations "
        "are on. You may see slightly different numerical results"
    ),
    (
        "I0000 00:00:1795708949.916928   14725 cudart_stub.cc:31] Could not find cuda "
        "drivers on your machine, GPU will not be used."
    ),
    (
        "E0000 00:00:1795708977.716221   14796 cuda_platform.cc:52] failed call to "
        "cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
    ),
    (
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, "
        "rebuild TensorFlow with the appropriate compiler flags."
    ),
]
KEPT = [
    "Traceback (most recent call last):",
    "/x/y.py:3: UserWarning: something worth reading",
    "hos-keras prune: error: model.keras: no such file.",
]


def test_chatter_is_recognised_and_nothing_else():
    assert all(_startup.chatter(line) for line in CHATTER)
    assert not any(_startup.chatter(line) for line in KEPT)


def _subprocess(argv, env=None):
    """Runs `argv` with `env` added to the environment."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _run(*args, env=None):
    return _subprocess([str(Path(sys.executable).with_name("hos-keras")), *args], env)


def _python(script, env=None):
    """Runs `script` in a fresh Python."""
    return _subprocess([sys.executable, "-c", script], env)


def test_hos_keras_help_and_version_are_quiet():
    done = _run("--help", env={"HOS_KERAS_QUIET": "", "HOS_KERAS_VERBOSE": ""})
    assert done.returncode == 0 and "hos-keras" in done.stdout
    assert not [line for line in done.stderr.splitlines() if line.strip()]
    done = _run("--version")
    assert done.stdout.strip() == f"hos-keras {hos_keras.__version__}"
    assert not [line for line in done.stderr.splitlines() if line.strip()]


def test_a_tflite_interpreter_is_made_quietly():
    script = (
        "import keras\n"
        "from hos_keras import export\n"
        "model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(3, 1)])\n"
        "export.interpreter(export.to_tflite(model))\n"
        "print('made')\n"
    )
    done = _python(script, {"HOS_KERAS_QUIET": "1", "HOS_KERAS_VERBOSE": ""})
    assert done.returncode == 0 and done.stdout.strip() == "made", done.stderr
    assert "XNNPACK" not in done.stderr


def test_tflite_conversion_writes_nothing_in_a_users_script():
    # Not a hos-keras process: only the lines hos_keras's own calls write are
    # hidden, so everything after the marker comes from the conversions.
    script = (
        "import sys, keras\n"
        "from hos_keras import export\n"
        "model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(3, 1)])\n"
        "sys.stderr.write('--- converting\\n'); sys.stderr.flush()\n"
        "export.interpreter(export.to_tflite(model))\n"
        "export.interpreter(export.timing_flatbuffer(model))\n"
        "print('made')\n"
    )
    done = _python(script, {"HOS_KERAS_QUIET": "", "HOS_KERAS_VERBOSE": ""})
    assert done.returncode == 0 and done.stdout.strip() == "made", done.stderr
    after = done.stderr.split("--- converting\n", 1)[1]
    assert not [line for line in after.splitlines() if line.strip()], after


def test_a_failing_block_keeps_every_line(capfd):
    try:
        with _startup.hidden_chatter():
            os.write(2, (CHATTER[1] + "\n").encode())
            raise RuntimeError("conversion failed")
    except RuntimeError:
        pass
    assert CHATTER[1] in capfd.readouterr().err


def test_importing_hos_keras_does_not_load_keras_tuner():
    script = (
        "import sys, hos_keras\n"
        "assert 'keras_tuner' not in sys.modules, 'loaded at import'\n"
        "from hos_keras.tuner import HOSHyperModel\n"
        "assert hos_keras.tuner.HOSHyperModel is HOSHyperModel\n"
        "assert 'keras_tuner' in sys.modules\n"
        "print('lazy')\n"
    )
    done = _python(script)
    assert done.returncode == 0 and done.stdout.strip() == "lazy", done.stderr


def test_hos_keras_quiet_hides_the_startup_lines_in_a_users_script():
    done = _python("import hos_keras\nprint('imported')", {"HOS_KERAS_QUIET": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr
    assert not [line for line in done.stderr.splitlines() if line.strip()], done.stderr
