"""The documentation site: it builds offline with warnings as errors, the API
reference covers the public names, and the code's links into docs/ hold.

The build runs `mkdocs build --strict` in a subprocess with every HTTP(S) proxy
pointed at a closed local port, so a build that tried to fetch anything (a font,
a remote inventory) would fail here rather than on a machine without a network.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Where the project's own text lives; each is searched whole.
SOURCES = ["hos_keras", "tests", "bench", "recipes", "scripts", "docs", "README.md"]

# A page of docs/ named in code or prose, with or without a heading:
# docs/<page>.md or docs/<page>.md#<anchor>.
DOCS_LINK = re.compile(
    r"(?<![\w/.-])docs/(?P<page>[\w/.-]+?\.md)(?:#(?P<anchor>[\w-]+))?"
)
HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<text>.*?)\s*(?:\{#(?P<id>[\w-]+)\})?$")
FENCE = re.compile(r"^\s*(```|~~~)")
IDENTIFIER = re.compile(r"^:::\s+(?P<path>[\w.]+)\s*$", re.MULTILINE)


def _text_files():
    """Every text file under SOURCES, as (path, text)."""
    for name in SOURCES:
        path = ROOT / name
        paths = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in paths:
            if not file.is_file() or "__pycache__" in file.parts:
                continue
            try:
                yield file, file.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # models, images, archives
                continue


def _anchors(page: Path) -> set[str]:
    """The ids mkdocs gives the headings of a page (toc's slugify, as mkdocs.yml
    configures it; an explicit `{#id}` wins; repeats get _1, _2, ...)."""
    anchors: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match["text"])  # links
        anchor = match["id"] or slugify(text.replace("`", ""), "-")
        unique, n = anchor, 0
        while unique in anchors:
            n += 1
            unique = f"{anchor}_{n}"
        anchors.add(unique)
    return anchors


def test_site_builds_offline_with_warnings_as_errors(tmp_path):
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",  # mkdocs-material's notice about its future
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "http_proxy": closed,
        "https_proxy": closed,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(ROOT / "mkdocs.yml"),
        "--site-dir",
        str(tmp_path / "site"),
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    if "No module named mkdocs" in output:
        pytest.fail(
            "mkdocs is not installed; install the test tools with "
            f'`pip install -e ".[test]"`.\n{output}'
        )
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert result.returncode == 0 and not warnings, (
        f"`mkdocs build --strict` failed (exit {result.returncode}):\n{output}"
    )
    assert (tmp_path / "site" / "method" / "index.html").is_file()


def test_api_reference_documents_every_public_name():
    tree = ast.parse((ROOT / "hos_keras" / "__init__.py").read_text(encoding="utf-8"))
    public = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "__all__" for t in node.targets)
    )
    documented = set()
    for page in sorted((DOCS / "api").glob("*.md")):
        for match in IDENTIFIER.finditer(page.read_text(encoding="utf-8")):
            documented.add(match["path"].rpartition(".")[2])
    missing = sorted(set(public) - documented)
    assert not missing, (
        f"hos_keras.__all__ names without a `::: hos_keras.<name>` entry in "
        f"docs/api/*.md: {missing}. Add each to the page of its concept (and to "
        "docs/api/index.md)."
    )


def test_nothing_cites_the_method_notes_outside_the_repository():
    # The name is built here so that this file does not match itself.
    outside = "METHOD" + ".md"
    citing = [
        f"{path.relative_to(ROOT)}:{number}"
        for path, text in _text_files()
        for number, line in enumerate(text.splitlines(), 1)
        if outside in line
    ]
    assert not citing, (
        f"{outside} is not part of this repository; point to the section of "
        f"docs/method.md instead: {citing}"
    )


def test_links_into_docs_point_to_existing_pages_and_headings():
    links, broken = 0, []
    for path, text in _text_files():
        for number, line in enumerate(text.splitlines(), 1):
            for match in DOCS_LINK.finditer(line):
                links += 1
                page = DOCS / match["page"]
                where = f"{path.relative_to(ROOT)}:{number}: {match[0]}"
                if not page.is_file():
                    broken.append(f"{where} (no such page)")
                elif match["anchor"] and match["anchor"] not in _anchors(page):
                    broken.append(f"{where} (no such heading)")
    assert links, "found no docs/<page>.md link at all; is DOCS_LINK right?"
    assert not broken, "links into docs/ that lead nowhere:\n" + "\n".join(broken)


def test_anchor_rule_matches_the_headings_of_the_method_page():
    # The anchors the code links to, computed as mkdocs computes them.
    anchors = _anchors(DOCS / "method.md")
    for anchor in (
        "eq-9-per-layer-ratios",
        "approaches-a1-a3",
        "tucker-2-ranks",
        "prunable-channels",
        "related-methods",
    ):
        assert anchor in anchors, sorted(anchors)
