"""The README's Python snippets: they parse, every name they use is defined by
the snippet or by the prelude of scripts/readme_snippets.py (which runs them),
and every `hos_keras.<attribute>` they name exists."""

import ast
import builtins
import importlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import readme_snippets

with open(os.path.join(ROOT, "README.md")) as _f:
    README = _f.read()
SNIPPETS = readme_snippets.blocks(README, "python")


def _stored(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _chain(node: ast.AST) -> list[str] | None:
    """`hos_keras.a.b` as ["hos_keras", "a", "b"], else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 10
    assert any(
        "hos-keras " in text for _, text in readme_snippets.blocks(README, "bash")
    )


@pytest.mark.parametrize(
    "line,snippet", SNIPPETS, ids=[f"line{n}" for n, _ in SNIPPETS]
)
def test_snippet_names_are_defined(line, snippet):
    tree = ast.parse(snippet, filename=f"README.md:{line}")
    known = (
        _stored(tree) | _stored(ast.parse(readme_snippets.PRELUDE)) | set(dir(builtins))
    )
    used = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }
    assert used <= known, (
        f"README.md:{line} uses undefined names {sorted(used - known)}"
    )


@pytest.mark.parametrize(
    "line,snippet", SNIPPETS, ids=[f"line{n}" for n, _ in SNIPPETS]
)
def test_snippet_hos_keras_attributes_exist(line, snippet):
    tree = ast.parse(snippet)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "hos_keras"
        ):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"README.md:{line}: from {node.module} import {alias.name}"
        if not isinstance(node, ast.Attribute):
            continue
        chain = _chain(node)
        if not chain or chain[0] != "hos_keras":
            continue
        obj = importlib.import_module("hos_keras")
        for i, part in enumerate(chain[1:], start=1):
            if not hasattr(obj, part):
                obj = importlib.import_module(".".join(chain[: i + 1]))
            else:
                obj = getattr(obj, part)


def test_shell_commands_join_continuations():
    text = "hos-keras prune a.keras --x 1 \\\n    --out b.keras   # comment\n# alone\n"
    assert readme_snippets.shell_commands(text) == [
        "hos-keras prune a.keras --x 1 --out b.keras"
    ]


def test_stderr_sorting():
    sorted_ = readme_snippets.sort_stderr(
        "I0000 00:00:1764 12345 cpu_feature_guard.cc:210] This TensorFlow binary\n"
        "UserWarning: something\n"
    )
    assert len(sorted_["tensorflow_startup"]) == 1
    assert sorted_["other"] == ["UserWarning: something"]
