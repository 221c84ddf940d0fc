"""`guard run`: every flag is checked before anything starts (in process); what a stdio guard writes where
(a real process: its stdout is the wire)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guard.cli.run import bearer_tokens, is_loopback, listen_address
from guard.errors import ConfigError
from tests.cli.conftest import guard
from tests.conftest import DUAL_ERA, GUARD, INITIALIZE, WAIT_S, free_port

TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--session", "a b", "--", "x"], "--session 'a b': use letters, digits and _.@:- (at most 128)"),
        (["--listen", "127.0.0.1:http", "--", "x"], "--listen '127.0.0.1:http': expected [HOST:]PORT"),
        (["--listen", "0.0.0.0:8999", "--", "x"], "--listen 0.0.0.0:8999: refusing to serve a non-loopback address"),
        (["--listen", "9", "--token", "short", "--", "x"], "the token for identity 'default' is too short"),
        (["--upstream", "ftp://x"], "--upstream 'ftp://x': expected an http:// or https:// URL"),
        (["--upstream", "http://127.0.0.1:1/mcp", "--", "x"], "give either --upstream URL or a command after `--`"),
        ([], "no upstream: give a command after `--`"),
        (["--max-message-size", "big", "--", "x"], "--max-message-size 'big': expected a size"),
        (["--request-timeout", "soon", "--", "x"], "--request-timeout 'soon': expected a duration"),
        (["--ledger-pool", "0", "--", "x"], "--ledger-pool '0': expected a whole number of at least 1"),
    ],
)
def test_a_bad_flag_exits_2_naming_it_and_opens_no_ledger(args: list[str], message: str, tmp_path: Path) -> None:
    ran = guard("run", "--ledger", str(tmp_path / "ledger.db"), *args)
    assert ran.status == 2
    assert ran.stderr.startswith(f"guard: error: {message}"), ran.stderr
    assert not (tmp_path / "ledger.db").exists()


def test_a_policy_with_a_problem_exits_2_naming_its_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nbogus: 1\n")
    ran = guard("run", "--policy", str(policy), "--", "true")
    assert (ran.status, ran.stderr) == (2, f"guard: error: {policy}:2:1: bogus: unknown key 'bogus'\n")


def test_no_policy_at_all_exits_2_saying_how_to_write_one(tmp_path: Path) -> None:
    ran = guard("run", "--", "true", env={"GUARD_POLICY": None, "XDG_CONFIG_HOME": str(tmp_path)})
    assert ran.status == 2
    assert f"no policy: give --policy FILE (or GUARD_POLICY), or write {tmp_path}/guard/policy.yaml" in ran.stderr


def test_a_command_that_cannot_start_exits_3_before_serving() -> None:
    ran = guard("run", "--", "no-such-mcp-server", "--flag")
    assert ran.status == 3
    assert ran.stderr == (
        "guard: error: cannot start upstream `no-such-mcp-server --flag`: command not found: no-such-mcp-server\n"
    )


def test_an_unreachable_upstream_url_exits_3_before_serving() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    ran = guard("run", "--upstream", url)
    assert ran.status == 3
    assert ran.stderr.startswith(f"guard: error: upstream {url} is unreachable")


def test_a_ledger_that_cannot_be_opened_exits_4_without_its_password() -> None:
    ran = guard("run", "--ledger", "postgresql+psycopg://guard:pw@127.0.0.1:1/none", "--", "true")
    assert ran.status == 4
    assert ran.stderr.startswith(
        "guard: error: ledger: cannot open the ledger at postgresql+psycopg://guard:***@127.0.0.1:1/none"
    )


def test_refresh_only_refreshes_what_is_due_and_exits(tmp_path: Path) -> None:
    ran = guard("run", "--refresh-only", "--ledger", str(tmp_path / "ledger.db"), "--", *DUAL_ERA)
    assert (ran.status, ran.stdout) == (0, "refreshed 0 balances\n")


# --- the checks themselves ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "address"),
    [("8080", ("127.0.0.1", 8080)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:65535", ("::1", 65535))],
)
def test_listen_is_host_and_port_the_host_loopback_when_not_given(listen: str, address: tuple[str, int]) -> None:
    assert listen_address(listen) == address


@pytest.mark.parametrize("listen", ["0", "65536", "host:", "host:port", ""])
def test_listen_needs_a_port_from_1_to_65535(listen: str) -> None:
    with pytest.raises(ConfigError, match="expected \\[HOST:\\]PORT"):
        listen_address(listen)


@pytest.mark.parametrize(("host", "loopback"), [("localhost", True), ("127.0.0.2", True), ("::1", True)])
def test_loopback_hosts_are_told_apart_from_others(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def test_the_token_belongs_to_the_identity_and_a_file_adds_more(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"bob": TOKEN[::-1]}))
    assert bearer_tokens(TOKEN, None, None) == {"default": TOKEN}
    assert bearer_tokens(TOKEN, tokens, "alice") == {"alice": TOKEN, "bob": TOKEN[::-1]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "--tokens .*: Expecting value"),
        ('["a list"]', "expected a JSON object mapping identity names to tokens"),
        ('{"alice": ""}', "expected a JSON object mapping identity names to tokens"),
        (json.dumps({"alice": TOKEN, "bob": TOKEN}), "two identities share one token"),
        ('{"alice": "0123456789abcde"}', "the token for identity 'alice' is too short: use at least 16 characters"),
    ],
)
def test_a_tokens_file_is_refused_unless_every_identity_has_its_own_long_token(
    content: str, message: str, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(content)
    with pytest.raises(ConfigError, match=message):
        bearer_tokens(None, tokens, None)


# --- a real stdio guard: stdout is the wire, logs go to stderr ---------------------------------------------


def converse(*guard_args: str, messages: list[dict[str, object]]) -> subprocess.CompletedProcess[str]:
    """Send messages to a stdio guard, close its stdin, collect everything it wrote."""
    lines = "".join(json.dumps(m) + "\n" for m in messages)
    return subprocess.run([*GUARD, *guard_args], input=lines, capture_output=True, text=True, timeout=WAIT_S)


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


def test_secrets_in_an_upstream_stderr_never_reach_the_error() -> None:
    script = (
        "import sys; sys.stderr.write('NWC_URI=nostr+walletconnect://pk?secret=9f9f relay=wss://r\\n"
        "Authorization: L402 AgEDbG9jYWxob3N0:0123abcd\\n'); sys.exit(1)"
    )
    result = converse("run", "--", sys.executable, "-c", script, messages=[INITIALIZE])
    assert result.returncode == 1
    assert "exited with status 1" in result.stderr
    for secret in ("nostr+walletconnect", "9f9f", "AgEDbG9jYWxob3N0", "0123abcd"):
        assert secret not in result.stderr
        assert secret not in result.stdout
    assert "[redacted]" in result.stderr


def test_a_malformed_message_carrying_a_secret_is_logged_scrubbed() -> None:
    preimage = "7f3c" * 16
    bad = {"jsonrpc": "2.0", "id": "x", "method": 5, "params": {"preimage": preimage, "macaroon": "AgEDbG9jYWxob3N0"}}
    result = converse("run", "--", *DUAL_ERA, messages=[INITIALIZE, bad])
    assert "refused a client message: Invalid request" in result.stderr
    assert preimage not in result.stderr and "AgEDbG9jYWxob3N0" not in result.stderr
