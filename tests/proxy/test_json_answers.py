"""`--http-answers json`: each handshake-era request answered with one JSON body (as pure forwarders do) instead of
an SSE stream; a call's progress notifications have no wire then and are dropped, its answer still comes.

A real `guard run --listen` in front of `tests/upstreams/dual_era.py`, spoken to with raw HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import INITIALIZE
from tests.hostile.http_guard import DUAL_ERA, HttpGuard, answers, error_of

ALLOW = "version: 1\ndefault: allow\n"
JSON_ONLY = {"Accept": "application/json", "Content-Type": "application/json"}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., HttpGuard]]:
    started: list[HttpGuard] = []
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW)

    def run(*args: str) -> HttpGuard:
        (tmp_path / str(len(started))).mkdir()
        guard = HttpGuard(tmp_path / str(len(started)), ["--policy", str(policy), *args], DUAL_ERA)
        started.append(guard)
        return guard

    yield run
    for guard in started:
        guard.stop()


def call(request_id: int, name: str, arguments: dict[str, object]) -> dict[str, object]:
    params = {"name": name, "arguments": arguments, "_meta": {"progressToken": "p"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def test_json_answers_come_as_one_json_body_and_a_calls_progress_is_dropped(start: Callable[..., HttpGuard]) -> None:
    guard = start("--http-answers", "json")
    opened = guard.http.post(guard.url, json=INITIALIZE, headers=JSON_ONLY)
    assert opened.status_code == 200, opened.text
    assert opened.headers["content-type"].startswith("application/json")
    session = {**JSON_ONLY, "mcp-session-id": opened.headers["mcp-session-id"]}
    guard.http.post(guard.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)

    counted = guard.http.post(guard.url, json=call(7, "count", {"n": 3}), headers=session)

    assert counted.headers["content-type"].startswith("application/json")
    [answer] = answers(counted)  # the answer only: the three progress notifications had no wire
    assert answer["id"] == 7
    assert answer["result"]["content"][0]["text"] == "counted 3"


def test_sse_answers_by_default_carry_the_calls_progress_and_need_a_client_accepting_sse(
    start: Callable[..., HttpGuard],
) -> None:
    guard = start()
    refused = guard.http.post(guard.url, json=INITIALIZE, headers=JSON_ONLY)
    assert refused.status_code == 406
    assert "text/event-stream" in error_of(refused)["message"]

    both = {**JSON_ONLY, "Accept": "application/json, text/event-stream"}
    opened = guard.http.post(guard.url, json=INITIALIZE, headers=both)
    session = {**both, "mcp-session-id": opened.headers["mcp-session-id"]}
    guard.http.post(guard.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    counted = guard.http.post(guard.url, json=call(7, "count", {"n": 3}), headers=session)

    messages = answers(counted)
    assert [m.get("method") for m in messages[:-1]] == ["notifications/progress"] * 3
    assert messages[-1]["result"]["content"][0]["text"] == "counted 3"


def test_an_unknown_http_answers_value_is_refused_naming_the_flag() -> None:
    from typer.testing import CliRunner

    from guard.cli.app import app

    result = CliRunner().invoke(app, ["run", "--listen", "127.0.0.1:0", "--http-answers", "xml", "--", "true"])
    assert result.exit_code == 2
    assert "--http-answers 'xml'" in result.output
