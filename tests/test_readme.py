"""The snippets of the README, of docs/ and of bench/README.md: they parse, every
name they use is defined by the snippet or by the prelude of
scripts/readme_snippets.py (which runs them), and every `hos_keras.<attribute>`
they name exists. Every link of README.md and bench/README.md leads to a file of
the repository (and to a heading of it, when the link names one); the links of
docs/ are checked by the site's strict build (tests/test_docs.py)."""

import ast
import builtins
import importlib
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import readme_snippets


def _read(document: str) -> str:
    with open(os.path.join(ROOT, document)) as f:
        return f.read()


DOCUMENTS = readme_snippets.documents()
SNIPPETS = [
    (document, line, snippet)
    for document in DOCUMENTS
    for line, snippet in readme_snippets.blocks(_read(document), "python")
]
IDS = [f"{document}:{line}" for document, line, _ in SNIPPETS]

# [text](target) outside code; the target's optional #anchor apart.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s#]*)(?:#(?P<anchor>[^)\s]+))?\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*$")
LINKED_DOCUMENTS = ["README.md", "bench/README.md"]


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


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code, with `code spans` blanked."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, re.sub(r"`[^`]*`", "``", line)))
    return lines


def _github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file: lower case, no
    punctuation but hyphens and underscores, a hyphen for each space; repeats get
    -1, -2, ..."""
    anchors: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        words = match["text"].lower().replace("`", "")
        anchor = re.sub(r"[^\w\- ]", "", words).replace(" ", "-")
        unique, n = anchor, 0
        while unique in anchors:
            n += 1
            unique = f"{anchor}-{n}"
        anchors.add(unique)
    return anchors


def broken_links(document: str, root: str = ROOT) -> list[str]:
    """The links of a document that lead to no file, or to no heading of it."""
    with open(os.path.join(root, document)) as f:
        text = f.read()
    broken = []
    for number, line in _prose(text):
        for match in LINK.finditer(line):
            target, anchor = match["target"], match["anchor"]
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            where = f"{document}:{number}: {match[0]}"
            path = os.path.normpath(
                os.path.join(root, os.path.dirname(document), target)
            )
            if target and not os.path.exists(path):
                broken.append(f"{where} (no such file)")
            elif anchor and (not target or path.endswith(".md")):
                with open(path if target else os.path.join(root, document)) as f:
                    if anchor not in _github_anchors(f.read()):
                        broken.append(f"{where} (no such heading)")
    return broken


def test_the_documents_have_snippets():
    assert len(SNIPPETS) >= 14
    for document in ["README.md", "docs/guides/cli.md"]:
        assert any(
            "hos-keras " in text
            for _, text in readme_snippets.blocks(_read(document), "bash")
        ), document
    assert any(document == "README.md" for document, _, _ in SNIPPETS)


def test_every_guide_has_a_snippet_that_runs():
    guides = [
        d for d in DOCUMENTS if d.startswith("docs/guides/") and d.endswith(".md")
    ]
    assert len(guides) >= 12
    without = [
        guide
        for guide in guides
        if not guide.endswith("/index.md")
        and not readme_snippets.blocks(_read(guide), "python")
        and not any(
            "hos-keras " in text
            for _, text in readme_snippets.blocks(_read(guide), "bash")
        )
    ]
    assert not without, f"guides without a python or hos-keras block: {without}"


@pytest.mark.parametrize("document,line,snippet", SNIPPETS, ids=IDS)
def test_snippet_names_are_defined(document, line, snippet):
    tree = ast.parse(snippet, filename=f"{document}:{line}")
    known = (
        _stored(tree) | _stored(ast.parse(readme_snippets.PRELUDE)) | set(dir(builtins))
    )
    used = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }
    assert used <= known, (
        f"{document}:{line} uses undefined names {sorted(used - known)}"
    )


@pytest.mark.parametrize("document,line,snippet", SNIPPETS, ids=IDS)
def test_snippet_hos_keras_attributes_exist(document, line, snippet):
    tree = ast.parse(snippet)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "hos_keras"
        ):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"{document}:{line}: from {node.module} import {alias.name}"
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


@pytest.mark.parametrize("document", LINKED_DOCUMENTS)
def test_links_lead_to_existing_files_and_headings(document):
    if document == "README.md":
        links = [m for _, line in _prose(_read(document)) for m in LINK.finditer(line)]
        assert len(links) >= 10, (
            f"found {len(links)} links in {document}; is LINK right?"
        )
    broken = broken_links(document)
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_broken_links_are_found(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "page.md").write_text("# A page\n\n## Does it work?\n")
    (tmp_path / "README.md").write_text(
        "# Title\n\n"
        "[ok](pages/page.md#does-it-work) [here](#title) [web](https://example.org)\n"
        "[gone](pages/missing.md) [bad heading](pages/page.md#nowhere)\n"
        "`[in code](pages/missing.md)`\n"
        "```\n[fenced](pages/missing.md)\n```\n"
    )
    assert broken_links("README.md", str(tmp_path)) == [
        "README.md:4: [gone](pages/missing.md) (no such file)",
        "README.md:4: [bad heading](pages/page.md#nowhere) (no such heading)",
    ]


def test_documents_are_the_readme_docs_and_the_benchmarks():
    assert DOCUMENTS[0] == "README.md" and DOCUMENTS[-1] == "bench/README.md"
    assert "docs/guides/latency.md" in DOCUMENTS


def test_only_selects_documents_and_lines():
    assert readme_snippets.wanted(None, "README.md", 3)
    assert readme_snippets.wanted(["docs/guides/cli.md"], "docs/guides/cli.md", 6)
    assert readme_snippets.wanted(["README.md:57"], "README.md", 57)
    assert not readme_snippets.wanted(["README.md:57"], "README.md", 79)
    assert not readme_snippets.wanted(["README.md"], "docs/index.md", 57)


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
