"""The `guard` command line: a thin layer over the library."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from guard._version import __version__
from guard.cli import logs as _logging
from guard.cli.budget import budget_app
from guard.cli.init import init
from guard.cli.ledger import LedgerOption, LedgerPoolOption, holds_app, ledger_app, open_ledger
from guard.cli.options import PolicyOption, UpstreamCommand, UpstreamUrl, policy_path, upstream_spec
from guard.cli.policy import approvals_app, audit_app, policy_app
from guard.cli.refresh import refresh
from guard.cli.report import report
from guard.demo import demo
from guard.errors import ConfigError, GuardError, UpstreamStartError
from guard.policy.source import PolicySource
from guard.proxy.limits import Limits, parse_count, parse_duration, parse_size
from ledgers import DEFAULT_POOL

logger = logging.getLogger("guard")

app = typer.Typer(
    name="guard",
    help="A budget-aware guard for payment MCP servers.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.add_typer(budget_app, name="budget")
app.add_typer(ledger_app, name="ledger")
app.add_typer(holds_app, name="holds")
app.command("refresh", context_settings={"allow_interspersed_args": False})(refresh)
app.command("demo")(demo)
app.add_typer(policy_app, name="policy")
app.add_typer(approvals_app, name="approvals")
app.add_typer(audit_app, name="audit")
app.command("init", context_settings={"allow_interspersed_args": False})(init)
app.command("report")(report)

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
    command: UpstreamCommand = None,
    upstream: UpstreamUrl = None,
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
    policy_file: PolicyOption = None,
    ledger_url: LedgerOption = None,
    ledger_pool: LedgerPoolOption = str(DEFAULT_POOL),
    refresh_only: Annotated[
        bool, typer.Option("--refresh-only", help="Refresh the balances that are due once, then exit (for cron).")
    ] = False,
    max_message_size: Annotated[
        str,
        typer.Option(
            "--max-message-size", envvar="GUARD_MAX_MESSAGE_SIZE", metavar="SIZE", help="Largest client message."
        ),
    ] = "16MiB",
    request_timeout: Annotated[
        str,
        typer.Option(
            "--request-timeout",
            envvar="GUARD_REQUEST_TIMEOUT",
            metavar="DURATION",
            help="How long the upstream may take to answer a request.",
        ),
    ] = "5m",
    max_sessions: Annotated[
        str, typer.Option("--max-sessions", envvar="GUARD_MAX_SESSIONS", metavar="N", help="HTTP sessions at once.")
    ] = "64",
    session_idle: Annotated[
        str,
        typer.Option(
            "--session-idle",
            envvar="GUARD_SESSION_IDLE",
            metavar="DURATION",
            help="Close an HTTP session after this long without a request.",
        ),
    ] = "30m",
    max_connections: Annotated[
        str,
        typer.Option(
            "--max-connections", envvar="GUARD_MAX_CONNECTIONS", metavar="N", help="HTTP connections at once."
        ),
    ] = "256",
    read_timeout: Annotated[
        str,
        typer.Option(
            "--read-timeout",
            envvar="GUARD_READ_TIMEOUT",
            metavar="DURATION",
            help="An HTTP request must arrive whole within this long.",
        ),
    ] = "10s",
) -> None:
    """Wrap an upstream MCP server: `guard run -- CMD [ARGS...]` or `guard run --upstream URL`."""
    try:
        spec = upstream_spec(command, upstream)
        if session is not None and not SESSION_NAME.match(session):
            raise ConfigError(f"--session {session!r}: use letters, digits and _.@:- (at most 128)")
        source = PolicySource.from_file(policy_path(policy_file))
        limits = Limits(
            max_message_bytes=parse_size(max_message_size, "--max-message-size"),
            request_timeout_s=parse_duration(request_timeout, "--request-timeout"),
            max_sessions=parse_count(max_sessions, "--max-sessions"),
            session_idle_s=parse_duration(session_idle, "--session-idle"),
            max_connections=parse_count(max_connections, "--max-connections"),
            read_timeout_s=parse_duration(read_timeout, "--read-timeout"),
        )
        pool = parse_count(ledger_pool, "--ledger-pool")
        tokens = _tokens(token, tokens_file, identity) if listen is not None else {}
        address = _listen_address(listen) if listen is not None else None
        if address is not None and not tokens and not _is_loopback(address[0]):
            raise ConfigError(
                f"--listen {listen}: refusing to serve a non-loopback address without a bearer token; "
                "set --token or GUARD_TOKEN"
            )
        spec.check()
    except ConfigError as exc:
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except UpstreamStartError as exc:
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(3) from None
    # The ledger opens before serving: a guard that cannot account for spend must not start.
    ledger = open_ledger(ledger_url, pool)
    if refresh_only:
        from guard.operators.refresh import refresh_once

        try:
            done = refresh_once(spec, source.policy, ledger, every=False)
        except UpstreamStartError as exc:
            typer.echo(f"guard: error: {exc}", err=True)
            raise typer.Exit(3) from None
        finally:
            ledger.close()
        typer.echo(f"refreshed {done} balance{'' if done == 1 else 's'}")
        raise typer.Exit(0)
    from guard.cli.serve import serve  # the MCP SDK and the serving stack: only `run` loads them

    try:
        status = serve(
            spec, source, ledger, address=address, tokens=tokens, session=session, identity=identity, limits=limits
        )
    except UpstreamStartError as exc:
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(3) from None
    except GuardError as exc:  # pragma: no cover - every GuardError has a branch above
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        ledger.close()
    raise typer.Exit(status)


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
