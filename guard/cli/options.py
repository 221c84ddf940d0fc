"""What several commands share: the upstream (a command after `--`, or `--upstream URL`), the policy file
(`--policy`, `GUARD_POLICY`, or the default path) and the ledger (`--ledger`, `--ledger-pool`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from guard.errors import ConfigError
from guard.redact import redact

if TYPE_CHECKING:
    from guard.proxy.upstream import UpstreamSpec

UpstreamCommand = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Argument(help="The upstream's stdio command, after `--`.", show_default=False),
]
UpstreamUrl = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--upstream", metavar="URL", help="A streamable-HTTP upstream instead of a command."),
]
PolicyOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--policy",
        envvar="GUARD_POLICY",
        metavar="FILE",
        help="The policy file (default: $XDG_CONFIG_HOME/guard/policy.yaml).",
    ),
]
LedgerOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--ledger",
        envvar="GUARD_LEDGER",
        metavar="URL",
        help="Ledger database: a SQLite path or SQLAlchemy URL (default: the per-user SQLite file).",
    ),
]
LedgerPoolOption = Annotated[
    str,
    typer.Option(
        "--ledger-pool",
        envvar="GUARD_LEDGER_POOL",
        metavar="N",
        help="PostgreSQL connections the guard keeps at most (a SQLite ledger ignores it).",
    ),
]


def upstream_spec(command: list[str] | None, url: str | None) -> UpstreamSpec:
    """The upstream the flags name.

    Raises:
        ConfigError: both or neither given, or a URL that is not http(s)."""
    # The MCP SDK comes with the upstream link: only the commands that reach an upstream load it.
    from guard.proxy.upstream import HttpUpstream, StdioUpstream

    if command and url:
        raise ConfigError("give either --upstream URL or a command after `--`, not both")
    if url:
        if not re.match(r"^https?://", url):
            raise ConfigError(f"--upstream {redact(url)!r}: expected an http:// or https:// URL")
        return HttpUpstream(url)
    if command:
        return StdioUpstream(tuple(command))
    raise ConfigError("no upstream: give a command after `--` (guard run -- CMD ARGS) or --upstream URL")


def policy_path(given: Path | None) -> Path:
    """The policy file to load: the one given, else the default one.

    Raises:
        ConfigError: none given and there is no default policy file."""
    if given is not None:
        return given
    default = default_policy_path()
    if not default.exists():
        raise ConfigError(
            f"no policy: give --policy FILE (or GUARD_POLICY), or write {default};"
            " `guard init -- CMD` writes a starting policy from the upstream's tools"
        )
    return default


def default_policy_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "guard" / "policy.yaml"
