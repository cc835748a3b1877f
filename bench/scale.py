"""Planning and slimming large networks: time and peak memory against the weights.

For EfficientNetV2L (119M parameters), ConvNeXtLarge (198M), ResNet152V2 (60M)
at 224 px with random weights, and a random 1,000-layer residual DAG, each
step runs in its own Python process (so that one step's memory does not count
against the next):

- `load`: build the model (the baseline every other step is measured above);
- `clone`: `keras.models.clone_model` + `set_weights`, the floor of any rebuild;
- `plan_global`: `plan_pruning(criterion="k34", allocation="global",
  fraction=0.5)`;
- `plan_target`: `plan_pruning(criterion="k34", allocation="target",
  macs_reduction=0.5)` (over Shapiro-Wilk, the default base);
- `slim`: `slim_model` of the global plan.

Each records its wall time and its peak resident memory above the loaded model
(`ru_maxrss` after the step minus after the build), as a multiple of the model's
weight bytes. The steps of one model run in turn; run it alone on the machine.

Run: .venv/bin/python bench/scale.py [--models NAME ...]  (writes
bench/results/scale.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "scale.json"
MODELS = ["EfficientNetV2L", "ConvNeXtLarge", "ResNet152V2", "dag1000"]
STEPS = ["load", "clone", "plan_global", "plan_target", "slim"]


def _dag(layers: int = 1000, seed: int = 0):
    """A 1,000-layer residual DAG on 32x32 inputs: blocks of conv (16 -> 32),
    ReLU, conv (32 -> 16) added to one of the last 8 block outputs, so every
    layer lies on a path to the output, each block's inner width is its own
    channel group and the residual stream is one group across random skips."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
    pool = [x]
    count = 1
    while count < layers - 4:
        y = keras.layers.Conv2D(32, 3, padding="same", name=f"a{count}")(x)
        y = keras.layers.ReLU(name=f"relu{count}")(y)
        y = keras.layers.Conv2D(16, 3, padding="same", name=f"b{count}")(y)
        skip = pool[-1 - int(rng.integers(0, min(8, len(pool))))]
        x = keras.layers.Add(name=f"add{count}")([y, skip])
        pool.append(x)
        count += 4
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="dag1000")


def _build(name: str):
    import keras

    if name == "dag1000":
        return _dag()
    return getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _step(name: str, step: str) -> dict:
    """Runs one step in this process; returns its measurements."""
    import warnings

    import keras

    import hos_keras

    warnings.simplefilter("ignore")
    # Keras builds a functional graph recursively: a 1,000-layer-deep chain
    # needs more than Python's default 1,000 frames.
    sys.setrecursionlimit(20_000)
    start = time.perf_counter()
    model = _build(name)
    built = time.perf_counter() - start
    weight_mb = sum(w.numpy().nbytes for w in model.weights) / 2**20
    base = _peak_mb()
    start = time.perf_counter()
    if step == "clone":
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    elif step == "plan_global":
        hos_keras.plan_pruning(
            model, criterion="k34", allocation="global", fraction=0.5
        )
    elif step == "plan_target":
        plan = hos_keras.plan_pruning(
            model, criterion="k34", allocation="target", macs_reduction=0.5
        )
    elif step == "slim":
        plan = hos_keras.plan_pruning(
            model, criterion="k34", allocation="global", fraction=0.5
        )
        start = time.perf_counter()  # the slimming alone
        base = _peak_mb()
        hos_keras.slim_model(model, plan)
    seconds = time.perf_counter() - start if step != "load" else built
    peak = _peak_mb() - base if step != "load" else base
    row = {
        "model": name,
        "step": step,
        "seconds": seconds,
        "peak_above_model_mb": peak,
        "weight_mb": weight_mb,
        "peak_over_weights": peak / weight_mb,
        "params": int(model.count_params()),
        "layers": len(model.layers),
    }
    if step == "plan_target":
        row["macs_reduction"] = plan.macs_reduction
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--step", nargs=2, metavar=("MODEL", "STEP"))
    args = parser.parse_args()
    if args.step:
        print(json.dumps(_step(*args.step)))
        return
    rows = []
    load = os.getloadavg()
    for name in args.models:
        for step in STEPS:
            result = subprocess.run(
                [sys.executable, __file__, "--step", name, step],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode:
                row = {"model": name, "step": step, "error": result.stderr[-2000:]}
            else:
                row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "bench/scale.py " + " ".join(sys.argv[1:]),
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "load_before": load,
                "load_after": os.getloadavg(),
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
