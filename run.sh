#!/usr/bin/env bash
# The project's two entry points, each self-installing:
#   bash run.sh demo   - the main job (see README.md)
#   bash run.sh test   - the whole test suite
# Both create ./.venv (Python 3.11) and install hos_keras into it on first use.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${PYTHON:-python3.11}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || return 1
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq || return 1; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
  if ! command -v "$PYTHON" >/dev/null; then
    apt_install python3.11 python3.11-venv || true
  fi
  if ! command -v "$PYTHON" >/dev/null; then
    echo "run.sh: $PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: creating $VENV with $PYTHON" >&2
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_install python3.11-venv || apt_install python3-venv || true
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  # Reinstall only when the package metadata changed.
  local stamp="$VENV/.hos_keras-installed"
  local want
  want=$(cat setup.py | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "run.sh: installing hos_keras and its dependencies into $VENV (tensorflow," \
      "keras, keras-tuner, ...; about a minute on first use)" >&2
    # pip's own notices (setuptools' "Editable installation" build warning,
    # this machine's index settings) go to a log, shown in full if pip fails.
    local log="$VENV/pip-install.log"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
      "$VENV/bin/python" -m pip install -q -e ".[test]"; } >"$log" 2>&1; then
      cat "$log" >&2
      echo "run.sh: installing into $VENV failed (the output above is in $log)" >&2
      exit 1
    fi
    echo "run.sh: installed (pip's output: $log)" >&2
    echo "$want" >"$stamp"
  fi
}

# Fashion-MNIST from Debian's package when we can install it; otherwise
# hos_keras.data falls back to the Keras download.
ensure_fashion_mnist() {
  if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "run.sh: installing Debian's dataset-fashion-mnist" >&2
    apt_install dataset-fashion-mnist ||
      echo "run.sh: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded" >&2
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    ensure_venv
    ensure_fashion_mnist
    exec "$VENV/bin/python" recipes/fashion_mnist_resnet20.py "$@"
    ;;
  test)
    ensure_venv
    ensure_fashion_mnist
    exec "$VENV/bin/python" -m pytest tests "$@"
    ;;
  *)
    echo "usage: bash run.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
