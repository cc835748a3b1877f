"""Every figure in the tables of README.md, docs/ and bench/README.md is traced to a
results file.

A markdown table whose rows hold a number (outside `code` spans and names such as
ResNet50, k34 or 3x3) is a table of measured figures: the first line below it must
start with "Source:" and name the bench/results/*.json files it comes from, and
every number in its rows must appear in one of them, within the rounding shown
(0.9166 matches 0.91658, 1.39x matches 1.3912, 50.8% matches 0.508, 77 ms matches
0.0774 s, 0.44 M matches 442368). A table of settings rather than measurements
says so where a reader sees it: the first line below it starts with "Not
measured:". A table without numbers needs neither.
"""

import re
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (
    [ROOT / "README.md"]
    + sorted((ROOT / "docs").rglob("*.md"))
    + [ROOT / "bench" / "README.md"]
)

# A number as a table shows it: 0.9166, 148,374, 1.5e-11, 1.38x, 50.8%, 77 ms; not
# the digits of a name (ResNet50, k34, ResNet-20/56/110, 32x32) or of a version.
FIGURE = re.compile(
    r"(?<![\w.])(?<!\w[-/])"
    r"(?P<mantissa>\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?)"
    r"(?:e(?P<exponent>[-+]?\d+))?"
    r"x?(?!\w|\.\d)"
    r"(?:\s?(?P<unit>%|ms|M|G)(?!\w))?"
)
STORED = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
CODE = re.compile(r"`[^`]*`")
SOURCE = re.compile(r"bench/results/[\w.-]+\.json")
# How a stored value may be shown in each unit: 0.508 or 50.8 as 50.8%, seconds or
# milliseconds as ms, a count in millions as M or billions as G.
SCALES = {None: (1.0,), "%": (100.0, 1.0), "ms": (1e3, 1.0), "M": (1e-6,), "G": (1e-9,)}


class Figure(NamedTuple):
    written: str
    value: float
    half_step: float  # half the last digit shown: the rounding it allows
    scales: tuple[float, ...]  # from a stored value to the unit written


def figures(text: str) -> list[Figure]:
    """The numbers of a table row."""
    found = []
    for match in FIGURE.finditer(CODE.sub(" ", text)):
        mantissa = match["mantissa"].replace(",", "")
        decimals = len(mantissa.partition(".")[2])
        power = 10.0 ** int(match["exponent"] or 0)
        found.append(
            Figure(
                match[0],
                float(mantissa) * power,
                0.5 * 10.0**-decimals * power,
                SCALES[match["unit"]],
            )
        )
    return found


def stored_values(path: Path) -> list[float]:
    """Every number written in a results file: values, and those in keys and notes."""
    return [abs(float(number)) for number in STORED.findall(path.read_text())]


def holds(values: list[float], figure: Figure) -> bool:
    """Whether some stored value, in the figure's unit, rounds to the figure."""
    limit = figure.half_step * (1 + 1e-9) + 1e-12 * figure.value
    return any(
        abs(stored * scale - figure.value) <= limit
        for stored in values
        for scale in figure.scales
    )


def tables(lines: list[str]):
    """(first line number, data rows as (line number, text), the paragraph
    below it) of every table outside fenced code."""
    fenced, i = False, 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            fenced = not fenced
        elif (
            not fenced
            and lines[i].startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+\s*", lines[i + 1])
        ):
            start, i = i, i + 2
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append((i + 1, lines[i]))
                i += 1
            below = i
            while below < len(lines) and not lines[below].strip():
                below += 1
            paragraph = []
            while below < len(lines) and lines[below].strip():
                paragraph.append(lines[below])
                below += 1
            yield start + 1, rows, " ".join(paragraph)
            continue
        i += 1


def untraced(document: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the document's tables, one message per problem."""
    name = document.relative_to(root)
    problems = []
    for start, rows, below in tables(document.read_text().splitlines()):
        numbered = [(line, figures(text)) for line, text in rows]
        if not any(found for _, found in numbered) or below.startswith("Not measured:"):
            continue
        if not below.startswith("Source:"):
            problems.append(
                f"{name} line {start}: a table of figures without a 'Source: "
                "bench/results/....json' line below it (or 'Not measured: ...' "
                "for a table of settings)"
            )
            continue
        sources = SOURCE.findall(below)
        missing = [source for source in sources if not (root / source).is_file()]
        if not sources or missing:
            problems.append(
                f"{name} line {start}: the Source line names no existing results "
                f"file ({', '.join(missing) or 'none named'})"
            )
            continue
        values = [value for source in sources for value in stored_values(root / source)]
        for line, found in numbered:
            for figure in found:
                if not holds(values, figure):
                    problems.append(
                        f"{name} line {line}: {figure.written} not found in "
                        f"{' or '.join(sources)}"
                    )
    return problems


@pytest.mark.parametrize(
    "document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS]
)
def test_every_table_figure_is_in_its_results_file(document):
    problems = untraced(document)
    assert not problems, "\n".join(problems)


def test_the_messages_name_the_line_the_figure_and_the_file(tmp_path):
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "x.json").write_text('{"accuracy": 0.90521}')
    document = tmp_path / "README.md"
    document.write_text(
        "| run | accuracy |\n|---|---|\n| demo | 0.9068 |\n| again | 0.9052 |\n\n"
        "Source: `bench/results/x.json`.\n\n"
        "| run | accuracy |\n|---|---|\n| demo | 0.9052 |\n\nNo source.\n\n"
        "| recipe | epochs |\n|---|---|\n| demo | 3 |\n\n"
        "Not measured: the recipes' settings.\n\n"
        "| run | accuracy |\n|---|---|\n| demo | 0.9052 |\n\n"
        "Source: `bench/results/y.json`.\n"
    )
    unsourced = (
        "README.md line 8: a table of figures without a 'Source: "
        "bench/results/....json' line below it (or 'Not measured: ...' for a table "
        "of settings)"
    )
    missing = (
        "README.md line 20: the Source line names no existing results file "
        "(bench/results/y.json)"
    )
    assert untraced(document, tmp_path) == [
        "README.md line 3: 0.9068 not found in bench/results/x.json",
        unsourced,
        missing,
    ]


@pytest.mark.parametrize("document,least", [("README.md", 1), ("bench/README.md", 9)])
def test_the_tables_of_figures_are_found(document, least):
    found = list(tables((ROOT / document).read_text().splitlines()))
    sourced = [below for _, _, below in found if below.startswith("Source:")]
    assert len(sourced) >= least, (
        f"only {len(sourced)} tables with a Source line found in {document}"
    )


@pytest.mark.parametrize(
    "written,stored",
    [("0.9166", 0.91658), ("1.39x", 1.3912), ("50.8%", 0.508), ("77 ms", 0.07742)]
    + [("0.44 M", 442368), ("148,374", 148374), ("1.5e-11", 1.4595e-11)],
)
def test_a_figure_matches_its_value_within_the_rounding_shown(written, stored):
    [figure] = figures(f"| {written} |")
    assert holds([stored], figure)


@pytest.mark.parametrize(
    "written,stored",
    [("0.9068", 0.9052), ("1.39x", 1.3849), ("148,374", 148375), ("50.8", 0.508)]
    + [("0.44 M", 0.44), ("77 ms", 0.77)],
)
def test_a_different_figure_does_not_match(written, stored):
    [figure] = figures(f"| {written} |")
    assert not holds([stored], figure)


def test_names_and_code_are_not_figures():
    row = "| ResNet50 (128x128) | `round_to=8` | k34, ResNet-20/56/110, 3.11.7 |"
    assert figures(row) == []
