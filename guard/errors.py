"""Every exception guard raises on purpose, in one place.

GuardError
├── ConfigError            bad flags, settings or files (exit status 2)
│   └── PolicyError        a policy file that cannot be used: each problem's file, line and column
├── UpstreamStartError     the upstream cannot be started or reached at all (exit status 3)
├── UpstreamError          a forwarded request got no result (an error answer, no answer in time, gone)
├── MessageRefused         a client message guard will not act on (unusable id, too large, unreadable)
├── PriceUnknown           a paying call whose price cannot be bounded (no price, no pay)
└── ChainError             a chain's node did not answer a question readably (HTTP, JSON-RPC, ABI, timeout)

The ledger's own tree (`ledgers.LedgerError`: refusals, amounts, storage) is separate: the ledger knows
nothing of guard. `guard.cli.exits` maps both trees to exit statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class GuardError(Exception):
    """Base class of every error the guard raises on purpose."""


class ConfigError(GuardError):
    """A flag, setting or file the guard was given is wrong; the message says which and why."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a policy file, and where."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    where: str  # the key path, e.g. tools.l402-fetch.max_price
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: " + (f"{self.where}: " if self.where else "") + self.message


class PolicyError(ConfigError):
    """A policy file that cannot be used; `problems` say where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


class UpstreamStartError(GuardError):
    """The upstream could not be started (stdio) or reached (HTTP)."""


class UpstreamError(GuardError):
    """A forwarded request got no result: the upstream answered with a JSON-RPC error (`code`, `message`,
    `data`), went away, or did not answer in time. `not_run`: the tool did not run, so nothing was paid (the
    upstream's own not-run error proves it, or guard never sent the request); otherwise the outcome is
    unknown."""

    def __init__(self, code: int, message: str, data: Any = None, *, not_run: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.not_run = not_run


class MessageRefused(GuardError):
    """A client message the guard will not act on, answered with a JSON-RPC error (`code`, `message`).
    `request_id` is the id to answer (None: a null id); `answerable` is False for a notification (nobody
    waits for its answer: it is dropped). `tool` names the tool of a refused `tools/call` (the audit trail
    records it)."""

    def __init__(
        self,
        code: int,
        message: str,
        request_id: str | int | None = None,
        *,
        answerable: bool = True,
        tool: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.answerable = answerable
        self.tool = tool


class PriceUnknown(GuardError):
    """A paying call whose price cannot be bounded (no price, no pay)."""


__all__ = [
    "ConfigError",
    "GuardError",
    "MessageRefused",
    "PolicyError",
    "PriceUnknown",
    "Problem",
    "UpstreamError",
    "UpstreamStartError",
]


class ChainError(GuardError):
    """A chain's node did not answer readably (HTTP, JSON-RPC or ABI trouble, a timeout): nothing is resolved.
    The message never holds the node's URL (it may carry an API key)."""
