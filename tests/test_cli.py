"""The command line: version, logging discipline, documented options, secrets kept out of errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import typer.main

from guard import __version__
from guard.cli.app import app
from guard.redact import redact
from tests.conftest import DUAL_ERA, GUARD, INITIALIZE, WAIT_S

TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def converse(*guard_args: str, messages: list[dict[str, object]]) -> subprocess.CompletedProcess[str]:
    """Send messages to a stdio guard, close its stdin, collect everything it wrote."""
    lines = "".join(json.dumps(m) + "\n" for m in messages)
    return subprocess.run([*GUARD, *guard_args], input=lines, capture_output=True, text=True, timeout=WAIT_S)


def test_version_is_printed() -> None:
    result = subprocess.run([*GUARD, "--version"], capture_output=True, text=True, timeout=WAIT_S)
    assert result.stdout.strip() == f"guard {__version__}"


def test_stdout_carries_only_mcp_messages_even_at_debug_level() -> None:
    result = converse("--log-level", "debug", "run", "--", *DUAL_ERA, messages=[INITIALIZE, TOOLS_LIST])
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, 2]
    assert all(a["jsonrpc"] == "2.0" for a in answers)
    assert "DEBUG" in result.stderr and "relaying stdio client session" in result.stderr


def test_json_logs_are_one_object_per_line_and_name_the_session() -> None:
    result = converse("--log-format", "json", "run", "--session", "desk-1", "--", *DUAL_ERA, messages=[INITIALIZE])
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= entries[0].keys()
    assert any("session desk-1" in e["message"] for e in entries)


def test_a_generated_session_id_is_logged_at_start() -> None:
    result = converse("run", "--", *DUAL_ERA, messages=[INITIALIZE])
    assert "session " in result.stderr.splitlines()[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-level", "loud", "run", "--", "x"], "'loud' is not one of debug, info, warning, error"),
        (["--log-format", "xml", "run", "--", "x"], "'xml' is not one of text, json"),
        (["run", "--session", "a b", "--", "x"], "--session 'a b': use letters, digits"),
    ],
)
def test_bad_options_are_named(args: list[str], message: str) -> None:
    result = subprocess.run([*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 2
    assert message in plain(result.stderr)


def plain(text: str) -> str:
    """The words of a message, without the box and line wrapping rich draws around usage errors."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_every_command_and_option_is_documented() -> None:
    root = typer.main.get_command(app)
    subcommands = getattr(root, "commands", {})
    assert subcommands, "the guard command group lists no subcommands"
    commands = {"guard": root, **{f"guard {name}": cmd for name, cmd in subcommands.items()}}
    for name, command in commands.items():
        assert command.help, f"{name} has no help text"
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert getattr(param, "help", None), f"{name} {param.opts[0]} has no help text"


def test_secrets_in_an_upstream_stderr_never_reach_the_error() -> None:
    script = (
        "import sys; sys.stderr.write('NWC_URI=nostr+walletconnect://pk?secret=9f9f relay=wss://r\\n"
        "Authorization: L402 AgEDbG9jYWxob3N0:0123abcd\\n'); sys.exit(1)"
    )
    result = converse("run", "--", sys.executable, "-c", script, messages=[INITIALIZE])
    assert "exited with status 1" in result.stderr
    for secret in ("nostr+walletconnect", "9f9f", "AgEDbG9jYWxob3N0", "0123abcd"):
        assert secret not in result.stderr
        assert secret not in result.stdout
    assert "[redacted]" in result.stderr


@pytest.mark.parametrize(
    ("text", "secret_part"),
    [
        ("nostr+walletconnect://b889ff5b1513b641e2a139f661a6613649?relay=wss%3A%2F%2Fr&secret=77aa", "77aa"),
        ("Authorization: L402 AgEDbG9jYWxob3N0AkIwMDAw:5f8b2c9d0e1f", "5f8b2c9d0e1f"),
        (
            "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqf",
            "zyg3zyg3",
        ),
        ("preimage=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "89abcdef"),
        ("P402_API_KEY=sk_live_4f9a8b7c6d5e4f3a2b1c", "4f9a8b7c"),
        ("cashuAeyJ0b2tlbiI6W3sicHJvb2ZzIjpbeyJhbW91bnQiOjJ9XX1dfQ", "W3sicHJvb2Z"),
        ("X-PAYMENT: eyJ4NDAyVmVyc2lvbiI6MSwic2NoZW1lIjoiZXhhY3QifQ==", "eyJ4NDAy"),
        ("PAYMENT-SIGNATURE: eyJzaWduYXR1cmUiOiIweGFiIn0", "eyJzaWdu"),
        ("AgEDbG9jYWxob3N0AkIwMDAwNGY5YThiN2M2ZDVlNGYzYTJiMWM/x+y", "bG9jYWxob3N0"),
        ("MDAxY2xvY2F0aW9uIGxvY2FsaG9zdDo4MDgxCjAwMjZpZGVudGlmaWVy", "Y2xvY2F0aW9u"),
    ],
)
def test_redact_removes_each_kind_of_secret(text: str, secret_part: str) -> None:
    scrubbed = redact(f"upstream said: {text} (while paying)")
    assert secret_part not in scrubbed
    assert scrubbed.startswith("upstream said: ") and scrubbed.endswith(" (while paying)")


@pytest.mark.parametrize(
    "line",
    [
        "Error: connect ECONNREFUSED 127.0.0.1:8080 (missing P402_API_KEY?)",
        "/check/work/main/.venv/bin/python /check/work/main/tests/upstreams/dual_era.py exited",
    ],
)
def test_redact_keeps_ordinary_diagnostics(line: str) -> None:
    assert redact(line) == line


def test_a_malformed_message_carrying_a_secret_is_logged_scrubbed() -> None:
    preimage = "7f3c" * 16
    bad = {"jsonrpc": "2.0", "id": "x", "method": 5, "params": {"preimage": preimage, "macaroon": "AgEDbG9jYWxob3N0"}}
    result = converse("run", "--", *DUAL_ERA, messages=[INITIALIZE, bad])
    assert "refused a client message: Invalid request" in result.stderr
    assert preimage not in result.stderr and "AgEDbG9jYWxob3N0" not in result.stderr
