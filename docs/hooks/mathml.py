"""MkDocs hook: the TeX formulas of the pages become MathML when the site is built.

pymdownx.arithmatex (generic mode) wraps each formula written between $ signs in a
`<span class="arithmatex">` (inline, delimited by `\\(` and `\\)`) or a
`<div class="arithmatex">` (display, by `\\[` and `\\]`). This hook converts the TeX
inside to MathML with latex2mathml, which browsers draw themselves: the site shows
its formulas without JavaScript and without fetching anything, at build time or
when read.
"""

import html
import re

from latex2mathml.converter import convert

FORMULA = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<body>.*?)</(?P=tag)>', re.DOTALL
)


def _mathml(match: re.Match) -> str:
    tag = match["tag"]
    tex = html.unescape(match["body"]).strip()[2:-2]  # without \( \) or \[ \]
    mathml = convert(tex, display="block" if tag == "div" else "inline")
    return f'<{tag} class="arithmatex">{mathml}</{tag}>'


def on_page_content(content: str, **kwargs) -> str:
    """Replaces every arithmatex formula of a page's HTML by its MathML."""
    return FORMULA.sub(_mathml, content)
