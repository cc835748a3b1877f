"""Runs the docs' Python snippets and `hos-keras` commands, as a newcomer would.

    .venv/bin/python scripts/readme_snippets.py [--demo] [--only PATH[:LINE] ...]

The documents are README.md, every page of docs/ and bench/README.md
(`DOCUMENTS`). Each ```python block runs in its own interpreter, in a scratch
directory, after a prelude that defines the names the snippets take as given
(`model`, `plan`, `train`, `val`, `train_ds`, `x`, `causal_lm`, `prompts`, ...)
on tiny stand-ins: a Fashion-MNIST ResNet-20 with random weights, 128 training
and 128 validation images, a 2-layer keras-hub GemmaCausalLM. Statements run one at a time; a statement may fail only where the table
`EXPECTED_ERRORS` says why (the CIFAR and ImageNet lines: those datasets cannot
be downloaded on the machines this runs on). Each ```bash block of `hos-keras`
commands runs line by line on the prelude's model saved as `model.keras`;
`--demo` also runs `bash run.sh demo` (about 7 minutes). `--only README.md:60
docs/guides/cli.md` runs the block starting at line 60 of the README and every
block of the CLI guide.

Everything written to standard error is kept and sorted into TensorFlow's C++
startup lines (`import tensorflow` writes them in any program; `hos-keras` and
the recipes hide them, see `hos_keras._startup`) and everything else; a snippet
passes when "everything else" is empty. Writes `bench/results/readme_snippets.json`
(or `--json PATH`) and exits with status 1 when a snippet fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

os.environ.setdefault("HOS_KERAS_QUIET", "1")  # this process starts quietly
from hos_keras import _startup

PRELUDE = """
import keras
import numpy as np
import tensorflow as tf

import hos_keras
from hos_keras import data as _data

(_x, _y), (_xt, _yt) = _data.fashion_mnist_arrays(standardize=True)
x_train, y_train = _x[:128], _y[:128]
x_test, y_test = _xt[:128], _yt[:128]
x, y = x_train[:64], y_train[:64]
train = train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(64)
val = val_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(64)
model = hos_keras.models.cifar_resnet(20, num_classes=10, input_shape=(28, 28, 1))
model.compile(
    optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
plan = hos_keras.plan_pruning(model, allocation="fixed", ratio=0.3)
import keras_hub as _hub
causal_lm = _hub.models.GemmaCausalLM(
    backbone=_hub.models.GemmaBackbone(
        vocabulary_size=100, num_layers=2, num_query_heads=4, num_key_value_heads=4,
        head_dim=8, hidden_dim=32, intermediate_dim=64,
    ),
    preprocessor=None,
)
prompts = {
    "token_ids": np.array([[5, 6, 7] + [0] * 13]),
    "padding_mask": np.array([[1, 1, 1] + [0] * 13]),
}
"""

# Runs one snippet statement by statement; writes what happened to argv[2]
# (which errors were expected is decided by the caller, from EXPECTED_ERRORS).
DRIVER = """
import ast, json, sys, time, traceback
source = open(sys.argv[1]).read()
namespace = {"__name__": "__main__"}
results = []
for node in ast.parse(source).body:
    text = ast.get_source_segment(source, node)
    start = time.perf_counter()
    error = error_type = trace = None
    try:
        exec(compile(ast.Module([node], []), "<snippet>", "exec"), namespace)
    except Exception as e:
        error_type = type(e).__name__
        error = error_type + (": " + str(e).splitlines()[0] if str(e) else "")
        trace = traceback.format_exc()
    results.append({"line": node.lineno, "statement": text,
                    "seconds": round(time.perf_counter() - start, 2),
                    "error": error, "error_type": error_type, "traceback": trace})
json.dump(results, open(sys.argv[2], "w"))
"""

# Statements that cannot succeed here, the exception they must raise, and why.
EXPECTED_ERRORS = [
    {
        "statement": 'data.cifar10("train"',
        "error": "DatasetNotFoundError",
        "why": "CIFAR-10 is not in /data/tfds and cannot be downloaded here",
    },
    {
        "statement": 'data.cifar10("test"',
        "error": "DatasetNotFoundError",
        "why": "CIFAR-10 is not in /data/tfds and cannot be downloaded here",
    },
    {
        "statement": 'data.imagenet("train"',
        "error": "DatasetNotFoundError",
        "why": "ImageNet needs the ILSVRC2012 archives, which are not here",
    },
]


def documents(root: str = ROOT) -> list[str]:
    """The documents whose snippets run, as paths relative to `root`: README.md,
    every page of docs/ and bench/README.md."""
    pages = sorted(Path(root, "docs").rglob("*.md"))
    return (
        ["README.md"]
        + [page.relative_to(root).as_posix() for page in pages]
        + ["bench/README.md"]
    )


def blocks(readme: str, language: str) -> list[tuple[int, str]]:
    """The fenced blocks of one language, as (first line number, text)."""
    found, lines = [], readme.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```" + language:
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            found.append((i + 2, "\n".join(lines[i + 1 : j]) + "\n"))
            i = j
        i += 1
    return found


def user_env() -> dict:
    """The environment a user's shell would have (no quieting set by us)."""
    env = dict(os.environ)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "HOS_KERAS_QUIET", "HOS_KERAS_VERBOSE"):
        env.pop(name, None)
    env["PATH"] = os.path.join(ROOT, ".venv", "bin") + os.pathsep + env.get("PATH", "")
    return env


def sort_stderr(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.strip()]
    return {
        "tensorflow_startup": [line for line in lines if _startup.chatter(line)],
        "other": [line for line in lines if not _startup.chatter(line)],
    }


def scratch_name(document: str, line: int) -> str:
    """A directory name for one block: docs/guides/cli.md, 12 -> docs_guides_cli_12."""
    return re.sub(r"\W", "_", document.removesuffix(".md")) + f"_{line}"


def run_python(document: str, line: int, snippet: str, scratch: str) -> dict:
    workdir = os.path.join(scratch, "python_" + scratch_name(document, line))
    os.makedirs(workdir)
    script = os.path.join(workdir, "snippet.py")
    with open(script, "w") as f:
        f.write(PRELUDE + "\n" + snippet)
    prelude_lines = PRELUDE.count("\n") + 1
    outcome = os.path.join(workdir, "outcome.json")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, script, outcome],
        check=False,
        cwd=workdir,
        env=user_env(),
        capture_output=True,
        text=True,
    )
    statements = []
    if os.path.exists(outcome):
        with open(outcome) as f:
            statements = json.load(f)
    for s in statements:
        s["line"] = (
            s["line"] - prelude_lines + line - 1 if s["line"] > prelude_lines else None
        )
    readme_statements = [s for s in statements if s["line"] is not None]
    errors = [s for s in statements if s["error"]]
    for s in errors:
        s["expected"] = next(
            (
                e["why"]
                for e in EXPECTED_ERRORS
                if e["statement"] in s["statement"] and s["error_type"] == e["error"]
            ),
            None,
        )
    unexpected = [s for s in errors if s["expected"] is None]
    stderr = sort_stderr(done.stderr)
    return {
        "kind": "python",
        "document": document,
        "line": line,
        "seconds": round(time.perf_counter() - start, 1),
        "statements": readme_statements,
        "expected_errors": [s for s in errors if s["expected"] is not None],
        "unexpected_errors": unexpected,
        "ok": done.returncode == 0 and not unexpected and not stderr["other"],
        "returncode": done.returncode,
        "stderr": stderr,
    }


def shell_commands(snippet: str) -> list[str]:
    """The commands of a bash block (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\s*\\\n\s*", " ", snippet)
    commands = []
    for text in joined.splitlines():
        text = re.sub(r"\s+#.*$", "", text).strip()
        if text and not text.startswith("#"):
            commands.append(text)
    return commands


def run_shell(
    document: str, line: int, command: str, workdir: str, timeout: float = 3600
) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", command],
        check=False,
        cwd=workdir,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    stderr = sort_stderr(done.stderr)
    return {
        "kind": "bash",
        "document": document,
        "line": line,
        "command": command,
        "seconds": round(time.perf_counter() - start, 1),
        "ok": done.returncode == 0 and not stderr["other"],
        "returncode": done.returncode,
        "stdout_tail": done.stdout.splitlines()[-3:],
        "stderr": stderr,
    }


def run_cli_block(document: str, line: int, snippet: str, scratch: str) -> list[dict]:
    workdir = os.path.join(scratch, "bash_" + scratch_name(document, line))
    os.makedirs(workdir)
    save = PRELUDE + "\nmodel.save('model.keras')\n"
    subprocess.run(
        [sys.executable, "-c", save],
        cwd=workdir,
        env=user_env(),
        check=True,
        capture_output=True,
    )
    return [
        run_shell(document, line, command, workdir)
        for command in shell_commands(snippet)
    ]


def wanted(only: list[str] | None, document: str, line: int) -> bool:
    """Whether `--only` selects the block of `document` starting at `line`."""
    return only is None or any(
        item in (document, f"{document}:{line}") for item in only
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        metavar="PATH[:LINE]",
        help="run only these documents (README.md, docs/guides/cli.md), or the "
        "blocks starting at these lines of them (README.md:60) (default: all)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="also run `bash run.sh demo` (about 7 minutes; default: no)",
    )
    parser.add_argument(
        "--json",
        default=os.path.join(ROOT, "bench", "results", "readme_snippets.json"),
        help="where the results go (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(
        {item.partition(":")[0] for item in args.only or []} - set(documents())
    )
    if unknown:
        parser.error(f"--only names no document of {documents()}: {unknown}")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for document in documents():
            with open(os.path.join(ROOT, document)) as f:
                text = f.read()
            for line, snippet in blocks(text, "python"):
                if wanted(args.only, document, line):
                    results.append(run_python(document, line, snippet, scratch))
                    report(results[-1])
            for line, snippet in blocks(text, "bash"):
                if "hos-keras " in snippet and wanted(args.only, document, line):
                    for result in run_cli_block(document, line, snippet, scratch):
                        results.append(result)
                        report(result)
        if args.demo:
            command = f"bash run.sh demo --output-dir {os.path.join(scratch, 'demo')}"
            results.append(run_shell("README.md", demo_line(), command, ROOT))
            report(results[-1])
    failed = [r for r in results if not r["ok"]]
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {
                "commit": git_commit(),
                "uncommitted_changes": uncommitted_changes(),
                "only": args.only,
                "loadavg_at_end": os.getloadavg(),
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "results": results,
            },
            f,
            indent=1,
        )
    print(
        f"{len(results) - len(failed)} of {len(results)} passed; details in {args.json}"
    )
    return 1 if failed else 0


def demo_line() -> int:
    """The README line that shows `bash run.sh demo`."""
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().splitlines()
    return next(i for i, text in enumerate(lines, 1) if "bash run.sh demo" in text)


def report(result: dict) -> None:
    where = f"{result['document']}:{result['line']}"
    what = result.get("command") or "python block"
    status = "ok" if result["ok"] else f"FAILED (exit {result['returncode']})"
    print(
        f"{where}: {what}: {status}, {result['seconds']} s, "
        f"{len(result['stderr']['tensorflow_startup'])} TensorFlow startup line(s)"
    )
    for s in result.get("expected_errors", []):
        print(f"    expected error at line {s['line']} ({s['expected']}): {s['error']}")
    for s in result.get("unexpected_errors", []):
        print(f"    error at line {s['line']}:")
        for text in s["traceback"].splitlines():
            print(f"      {text}")
    for other in result["stderr"]["other"][-15:]:
        print(f"    stderr: {other}")
    sys.stdout.flush()


def uncommitted_changes() -> list[str]:
    """`git status --short` of the library and the documents when the run ended."""
    done = subprocess.run(
        ["git", "status", "--short", "--", "hos_keras", *documents()],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return done.stdout.splitlines()


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
