"""`guard run`: its flags, checked before anything starts (the upstream, the policy, the limits, the bearer
tokens and the listen address), then the ledger, then serving (`guard.cli.serve`)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from guard.cli.options import (
    LedgerOption,
    LedgerPoolOption,
    PolicyOption,
    UpstreamCommand,
    UpstreamUrl,
    policy_path,
    upstream_spec,
)
from guard.errors import ConfigError
from guard.policy.source import PolicySource
from guard.proxy.limits import Limits, parse_count, parse_duration, parse_size
from ledgers import DEFAULT_POOL, Ledger

SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
# A bearer token shorter than this is refused: it could be guessed.
MIN_TOKEN_CHARS = 16


def run(
    command: UpstreamCommand = None,
    upstream: UpstreamUrl = None,
    listen: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here
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
    upstream_sessions: Annotated[
        str,
        typer.Option(
            "--upstream-sessions",
            envvar="GUARD_UPSTREAM_SESSIONS",
            metavar="per-session|per-identity|shared",
            help="HTTP: an upstream per client session, per identity, or one shared by all (README).",
        ),
    ] = "shared",
    warm: Annotated[
        str,
        typer.Option(
            "--warm",
            envvar="GUARD_WARM",
            metavar="N",
            help="HTTP, per-session upstreams: keep N started and initialised for new sessions.",
        ),
    ] = "0",
    http_answers: Annotated[
        str,
        typer.Option(
            "--http-answers",
            envvar="GUARD_HTTP_ANSWERS",
            metavar="sse|json",
            help="HTTP, handshake era: answer each request on an SSE stream (progress reaches the client) or as one "
            "JSON body (faster; a call's progress notifications are dropped).",
        ),
    ] = "sse",
) -> None:
    """Wrap an upstream MCP server: `guard run -- CMD [ARGS...]` or `guard run --upstream URL`."""
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
    from guard.proxy.sharing import PER_SESSION, Sharing  # the MCP SDK: only `run` loads it

    sharing = Sharing(upstream_sessions, parse_whole(warm, "--warm"))
    if sharing.warm and sharing.mode != PER_SESSION:
        raise ConfigError(f"--warm {warm}: warm starts are for --upstream-sessions per-session")
    if http_answers not in ("sse", "json"):
        raise ConfigError(f"--http-answers {http_answers!r}: use sse or json")
    pool = parse_count(ledger_pool, "--ledger-pool")
    tokens = bearer_tokens(token, tokens_file, identity) if listen is not None else {}
    address = listen_address(listen) if listen is not None else None
    if address is not None and not tokens and not is_loopback(address[0]):
        raise ConfigError(
            f"--listen {listen}: refusing to serve a non-loopback address without a bearer token; "
            "set --token or GUARD_TOKEN"
        )
    spec.check()
    # The ledger opens before serving: a guard that cannot account for spend must not start.
    with Ledger.open(ledger_url, pool=pool) as ledger:
        if refresh_only:
            from guard.operators.refresh import refresh_once  # the MCP SDK: loaded by the commands that use it

            done = refresh_once(spec, source.policy, ledger, every=False)
            typer.echo(f"refreshed {done} balance{'' if done == 1 else 's'}")
            return
        from guard.cli.serve import serve  # the MCP SDK and the serving stack: only `run` loads them

        serve(
            spec,
            source,
            ledger,
            address=address,
            tokens=tokens,
            session=session,
            identity=identity,
            limits=limits,
            sharing=sharing,
            json_answers=http_answers == "json",
        )


def parse_whole(text: str, flag: str) -> int:
    """A whole number ≥ 0.

    Raises:
        ConfigError: not one."""
    if not text.strip().isdigit():
        raise ConfigError(f"{flag} {text!r}: expected a whole number of at least 0")
    return int(text)


def listen_address(listen: str) -> tuple[str, int]:
    """`--listen [HOST:]PORT` as (host, port); the host is 127.0.0.1 when not given.

    Raises:
        ConfigError: no port from 1 to 65535."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {listen!r}: expected [HOST:]PORT with a port from 1 to 65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_tokens(token: str | None, tokens_file: Path | None, identity: str | None) -> dict[str, str]:
    """Bearer tokens by the identity they stand for (`--token` is `--identity`'s, else "default's"); never
    logged.

    Raises:
        ConfigError: an unreadable tokens file, a token too short, or one token for two identities."""
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
        if len(value) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"the token for identity {name!r} is too short: use at least {MIN_TOKEN_CHARS} characters"
            )
    if len(set(tokens.values())) != len(tokens):
        raise ConfigError("two identities share one token: every token must be unique")
    return tokens
