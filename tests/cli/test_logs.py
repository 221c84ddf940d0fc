"""guard's one log handler: every record it emits is redacted, whoever logged it, in both formats."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from guard.cli.logs import JsonFormatter, RedactingFormatter
from tests.conftest import WAIT_S

MACAROON = "AgEDbG9jYWxob3N0AkIwMDAwNGY5YThiN2M2ZDVlNGYzYTJiMWMAAAYgq1w8"


@pytest.mark.parametrize("formatter", [RedactingFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_records_message_arguments_traceback_and_stack_are_redacted(formatter: logging.Formatter) -> None:
    try:
        raise ValueError(f"refused token=tk-9f8e7d6c for {MACAROON}")
    except ValueError:
        exc_info = sys.exc_info()
    message = {"params": {"macaroon": "m-42", "x-payment": "xp-42"}}
    record = logging.LogRecord("mcp.client", logging.DEBUG, __file__, 1, "sent %s", (message,), exc_info, sinfo="s")
    record.stack_info = "Stack (most recent call last):\n  api_key=ak-42"

    shown = formatter.format(record)

    for secret in ("tk-9f8e7d6c", MACAROON, "m-42", "xp-42", "ak-42"):
        assert secret not in shown
    assert "ValueError: refused token=[redacted]" in shown and "mcp.client" in shown


def test_at_debug_the_libraries_loggers_and_an_uncaught_traceback_go_through_the_redactor() -> None:
    script = (
        "import logging\n"
        "from guard.cli import logs\n"
        "logs.configure('debug', 'json')\n"
        "logging.getLogger('httpx').debug('HTTP Request: GET https://u:pw-42@api.example/x?api_key=ak-42')\n"
        "logging.getLogger('mcp.client.streamable_http').debug(\"SSE message: {'preimage': 'pre-42'}\")\n"
        "raise RuntimeError('upstream said: macaroon Zq7-42')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT_S)

    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("httpx", "debug"),
        ("mcp.client.streamable_http", "debug"),
        ("guard", "critical"),
    ]
    assert "RuntimeError: upstream said: macaroon [redacted]" in lines[2]["exception"]
    for secret in ("pw-42", "ak-42", "pre-42", "Zq7-42"):
        assert secret not in done.stderr
