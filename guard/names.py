"""When two tool names name the same tool: the one place guard compares tool names.

- `spelling`: the name or its other case style (`l402_fetch` is `l402-fetch`): the same tool. 402-mcp
  renamed its tools from snake to kebab case; policies and adapters take both (`known`: which of a
  family's tools a name spells).
- `folded`: also the same after Unicode NFKC, case folding, trimming whitespace, dropping invisible
  format characters and reading every Unicode dash as `-`. An upstream that normalises names may run
  `L402-PAY`, ` l402-pay` or `l402\u2010pay` as `l402-pay`: such a *variant* of a tool the policy
  names is refused, never let through as some other, unpriced tool.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from functools import cache, lru_cache

MINUS_SIGN = "\u2212"  # not a dash to Unicode (it is maths), but it looks like one


def spelling(name: str) -> str:
    """`name` in kebab case: equal for the spellings of one tool that guard takes as exact."""
    return name.replace("_", "-")


def known(tool: str, names: Iterable[str]) -> str | None:
    """The name in `names` that `tool` spells (in either case style), or None."""
    wanted = spelling(tool)
    if isinstance(names, frozenset | tuple):  # a family's fixed names, asked on every call: indexed once
        return _by_spelling(names).get(wanted)
    return next((name for name in names if spelling(name) == wanted), None)


@cache
def _by_spelling(names: frozenset[str] | tuple[str, ...]) -> dict[str, str]:
    """`names` by their spelling; of two with one spelling, the first."""
    index: dict[str, str] = {}
    for name in names:
        index.setdefault(spelling(name), name)
    return index


@lru_cache(maxsize=4096)  # asked for every call's tool name: the same few names, over and over
def folded(name: str) -> str:
    """`name` as an upstream that normalises names might read it: equal for every variant."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    kept = ("-" if _dash(c) else c for c in text if unicodedata.category(c) != "Cf")
    return spelling("".join(kept).strip())


def _dash(char: str) -> bool:
    return unicodedata.category(char) == "Pd" or char == MINUS_SIGN
