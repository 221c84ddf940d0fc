"""What several commands share: the upstream (a command after `--`, or `--upstream URL`) and the
policy file (`--policy`, `GUARD_POLICY`, or the default path)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from guard.errors import ConfigError
from guard.redact import redact

if TYPE_CHECKING:
    from guard.proxy import upstream as _upstream

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


def upstream_spec(command: list[str] | None, url: str | None) -> _upstream.UpstreamSpec:
    from guard.proxy import upstream as _upstream  # the MCP SDK: only commands that reach an upstream load it

    if command and url:
        raise ConfigError("give either --upstream URL or a command after `--`, not both")
    if url:
        if not re.match(r"^https?://", url):
            raise ConfigError(f"--upstream {redact(url)!r}: expected an http:// or https:// URL")
        return _upstream.HttpUpstream(url)
    if command:
        return _upstream.StdioUpstream(tuple(command))
    raise ConfigError("no upstream: give a command after `--` (guard run -- CMD ARGS) or --upstream URL")


def policy_path(given: Path | None) -> Path:
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
