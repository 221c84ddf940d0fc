"""The `guard` command line: a thin layer over the library."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys
import uuid
from pathlib import Path
from typing import Annotated, Optional

import anyio
import typer

from guard import _logging, _upstream
from guard._errors import ConfigError, GuardError, UpstreamStartError
from guard._ledger_commands import LedgerOption, ledger_app, open_ledger
from guard._relay import OpenGate, Session
from guard._version import __version__

logger = logging.getLogger("guard")

app = typer.Typer(
    name="guard",
    help="A budget-aware guard for payment MCP servers.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.add_typer(ledger_app, name="ledger")

SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"guard {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer needs Optional here
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="GUARD_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    log_format: Annotated[
        str,
        typer.Option("--log-format", envvar="GUARD_LOG_FORMAT", help="text or json (one object per line)."),
    ] = "text",
) -> None:
    """Logs always go to stderr; in stdio mode stdout carries only MCP messages."""
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter(f"{log_level!r} is not one of debug, info, warning, error", param_hint="--log-level")
    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"{log_format!r} is not one of text, json", param_hint="--log-format")
    _logging.configure(log_level, log_format)  # type: ignore[arg-type]


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="The upstream's stdio command, after `--`.", show_default=False),
    ] = None,
    upstream: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--upstream", metavar="URL", help="Wrap a streamable-HTTP upstream instead of a command."),
    ] = None,
    listen: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--listen", metavar="[HOST:]PORT", help="Serve clients over streamable HTTP instead of stdio."),
    ] = None,
    token: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--token", envvar="GUARD_TOKEN", help="Require `Authorization: Bearer <token>` over HTTP."),
    ] = None,
    tokens_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--tokens", metavar="FILE", help="JSON object {identity: token}: several bearer tokens."),
    ] = None,
    session: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--session", metavar="NAME", help="The stdio session's id (default: generated)."),
    ] = None,
    identity: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--identity", metavar="NAME", help="Who the agent acts for (over HTTP: the token's name)."),
    ] = None,
    ledger_url: LedgerOption = None,
) -> None:
    """Wrap an upstream MCP server: `guard run -- CMD [ARGS...]` or `guard run --upstream URL`."""
    # The ledger opens first: a guard that cannot account for spend must not start.
    open_ledger(ledger_url).close()
    try:
        spec = _upstream_spec(command, upstream)
        if session is not None and not SESSION_NAME.match(session):
            raise ConfigError(f"--session {session!r}: use letters, digits and _.@:- (at most 128)")
        if listen is None:
            spec.check()
            status = _run_stdio(spec, session, identity)
        else:
            from guard._http_front import serve_http

            host, port = _listen_address(listen)
            tokens = _tokens(token, tokens_file, identity)
            if not tokens and not _is_loopback(host):
                raise ConfigError(
                    f"--listen {listen}: refusing to serve a non-loopback address without a bearer token; "
                    "set --token or GUARD_TOKEN"
                )
            spec.check()
            serve_http(spec, OpenGate(), host, port, tokens, identity)
            status = 0
    except ConfigError as exc:
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except UpstreamStartError as exc:
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(3) from None
    except GuardError as exc:  # pragma: no cover - every GuardError has a branch above
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(status)


def _run_stdio(spec: _upstream.UpstreamSpec, session_name: str | None, identity: str | None) -> int:
    from guard._stdio_front import serve_stdio

    session = Session(id=session_name or uuid.uuid4().hex[:16], identity=identity, transport="stdio")
    logger.info("guard %s: session %s%s", __version__, session.id, f", identity {identity}" if identity else "")
    failure = anyio.run(serve_stdio, spec, OpenGate(), session)
    if failure is not None:
        typer.echo(f"guard: error: {failure}", err=True)
        return 1
    return 0


def _upstream_spec(command: list[str] | None, url: str | None) -> _upstream.UpstreamSpec:
    if command and url:
        raise ConfigError("give either --upstream URL or a command after `--`, not both")
    if url:
        if not re.match(r"^https?://", url):
            raise ConfigError(f"--upstream {url!r}: expected an http:// or https:// URL")
        return _upstream.HttpUpstream(url)
    if command:
        return _upstream.StdioUpstream(tuple(command))
    raise ConfigError("no upstream: give a command after `--` (guard run -- CMD ARGS) or --upstream URL")


def _listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {listen!r}: expected [HOST:]PORT with a port from 1 to 65535")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tokens(token: str | None, tokens_file: Path | None, identity: str | None) -> dict[str, str]:
    """Bearer tokens by the identity they stand for; never logged."""
    tokens: dict[str, str] = {}
    if token:
        tokens[identity or "default"] = token
    if tokens_file is not None:
        try:
            loaded = json.loads(tokens_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--tokens {tokens_file}: {exc}") from exc
        if not isinstance(loaded, dict) or not all(isinstance(v, str) and v for v in loaded.values()):
            raise ConfigError(f"--tokens {tokens_file}: expected a JSON object mapping identity names to tokens")
        tokens.update(loaded)
    for name, value in tokens.items():
        if len(value) < 16:
            raise ConfigError(f"the token for identity {name!r} is too short: use at least 16 characters")
    if len(set(tokens.values())) != len(tokens):
        raise ConfigError("two identities share one token: every token must be unique")
    return tokens


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["app", "main"]
