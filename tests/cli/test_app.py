"""The app: its commands, its global options, and how `guard` ends on Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guard import __version__
from guard.cli import app
from guard.cli.app import main
from tests.cli.conftest import guard, plain
from tests.conftest import WAIT_S

# What only serving needs: an operator's command that loaded them would start twice as slowly.
SERVING_ONLY = ["apscheduler", "mcp", "mcp_types", "starlette", "uvicorn"]


def test_the_version_is_printed() -> None:
    ran = guard("--version")
    assert (ran.status, ran.stdout.strip()) == (0, f"guard {__version__}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-level", "loud", "run", "--", "x"], "'loud' is not one of debug, info, warning, error"),
        (["--log-format", "xml", "run", "--", "x"], "'xml' is not one of text, json"),
    ],
)
def test_a_bad_global_option_is_a_usage_error_naming_it(args: list[str], message: str) -> None:
    ran = guard(*args)
    assert ran.status == 2
    assert message in plain(ran.stderr)


def test_no_command_shows_the_commands() -> None:
    ran = guard()
    for command in ("run", "init", "demo", "refresh", "budget", "report", "ledger", "holds", "policy", "audit"):
        assert f" {command} " in ran.stdout


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "app", interrupted)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 130


def test_the_operators_commands_start_without_the_mcp_sdk_or_the_serving_stack(tmp_path: Path) -> None:
    # A fresh process: what it imports is what an operator waits for.
    script = (
        "import json, sys\n"
        "from guard.cli.app import app\n"
        "for args in (['budget', 'show', '--json'], ['report', '--format', 'json']):\n"
        "    try:\n"
        "        app([*args, '--ledger', sys.argv[1]])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, (args, done.code)\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "sys.stderr.write(json.dumps(sorted(loaded & set(json.loads(sys.argv[2])))))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ledger.db"), json.dumps(SERVING_ONLY)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stderr.splitlines()[-1]) == []
