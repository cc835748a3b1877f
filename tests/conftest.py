"""Shared pytest configuration and fixtures."""

import os

# TensorFlow turns its oneDNN kernels on by itself only on some CPUs (seen on
# Intel, not on AMD EPYC); without them, its CPU Conv2D rejects channels_first
# inputs in eager calls ("only supports the NHWC tensor format"). The suite tests
# channels_first models, so it asks for them everywhere, before TensorFlow loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tiny

SCRIPTS = Path(__file__).parent / "scripts"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a test that takes more than a few seconds (CI runs them)"
    )
    # Keras 3 / TensorFlow call np.array(variable) when saving, which numpy 2.4
    # reports as deprecated; the warning is theirs, not ours.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword"
        ":DeprecationWarning",
    )
    # TensorFlow's own notice that tf.lite.Interpreter moves to another package.
    config.addinivalue_line(
        "filterwarnings", "ignore:.*tf.lite.Interpreter is deprecated:UserWarning"
    )
    # KerasTuner's oracle calls threading.currentThread().getName(), which
    # Python 3.10+ reports as deprecated; also theirs.
    config.addinivalue_line(
        "filterwarnings", "ignore::DeprecationWarning:keras_tuner.src.engine.oracle"
    )


@pytest.fixture
def script_report():
    """Runs tests/scripts/NAME in a fresh Python and returns its last JSON line.

    Distribution tests need their own process: logical devices must be set before
    TensorFlow initialises.
    """

    def run(name: str, timeout: int = 300) -> dict:
        result = subprocess.run(
            [sys.executable, str(SCRIPTS / name)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
def cnn():
    """A fresh `tiny.cnn()`: three prunable convs with differing statistics."""
    return tiny.cnn()


@pytest.fixture
def residual_cnn():
    """A fresh `tiny.residual_cnn()`: a channel group across a residual Add."""
    return tiny.residual_cnn()
