"""Parsing HCL2 text with python-hcl2's grammar (``hcl2.lark``) and post-lexer.

python-hcl2's own ``parses_to_tree`` builds its Lark parser with ``propagate_positions=True``, which costs about
40 % of the parse of a large template; the evaluator only needs line numbers, which every token carries. So the
same grammar and post-lexer are loaded once per process without position propagation, the built parser cached
(Lark's cache file, keyed by the grammar) under ``$XDG_CACHE_HOME/stemforge`` (``~/.cache/stemforge``). When the
cache directory cannot be written, python-hcl2's parser is used as is. Lines come from :func:`first_line`."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import hcl2
import hcl2.parser
import lark
from hcl2.postlexer import PostLexer
from lark import Lark, Token, Tree

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _parser() -> Lark | None:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    cache = Path(base) / "stemforge" / f"hcl2-lalr-{getattr(hcl2, '__version__', 'x')}-{lark.__version__}.bin"
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        return Lark.open("hcl2.lark", parser="lalr", rel_to=hcl2.parser.__file__, propagate_positions=False,
                         postlex=PostLexer(), cache=str(cache))
    except Exception as e:  # noqa: BLE001 - any trouble: python-hcl2's own parser
        log.debug("HCL2 parser cache unavailable (%s); using python-hcl2's parser", e)
        return None


def parse_text(text: str) -> Tree:
    """The Lark tree of HCL2 ``text`` (the same tree ``hcl2.parses_to_tree`` gives, without ``meta``
    positions). Raises Lark's exceptions (with ``line``/``column``) on syntax errors."""
    parser = _parser()
    if parser is None:
        return hcl2.parses_to_tree(text)
    tree: Tree = parser.parse(text + "\n")  # python-hcl2 appends the newline its grammar needs at the end
    return tree


def first_line(node: Any) -> int:
    """The line of the first token of ``node`` (1 when it has none)."""
    if isinstance(node, Token):
        return node.line or 1
    if isinstance(node, Tree):
        for child in node.children:
            line = first_line(child)
            if line:
                return line
        return 0
    return 0
