"""The fake 402-mcp (tests/upstreams/fake_402mcp.py) for the load run (bench/http_load.py): one per process.

Over HTTP a guard may start an upstream per client session, so many fakes run at once. Each keeps its own
state file, `$BENCH_FAKE_DIR/state-<pid>.json`, started from `$BENCH_FAKE_DIR/template.json` (the prices), so
no fake overwrites another's record of what left its wallet; the load run adds the `payments` of all of them.

The state is read from the file once, then kept in memory (no one else edits it), and written when a payment
or a payment attempt was recorded: the fake's own cost stays small next to the guard's, and its record of
what it paid is on disk the moment it answers.

    BENCH_FAKE_DIR=/tmp/x .venv/bin/python bench/load_402mcp.py
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

FOLDER = Path(os.environ["BENCH_FAKE_DIR"])
STATE_FILE = FOLDER / f"state-{os.getpid()}.json"
if (FOLDER / "template.json").exists():
    shutil.copyfile(FOLDER / "template.json", STATE_FILE)
os.environ["FAKE_STATE"] = str(STATE_FILE)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "upstreams"))

# Run as a script, like the fakes: they import each other from their folder.
import fake_402mcp  # noqa: E402
from _fake_state import serve  # noqa: E402

_load, _save = fake_402mcp.STATE.load, fake_402mcp.STATE.save
_cached: dict[str, Any] = {}
_written = (-1, -1)


def load() -> dict[str, Any]:
    if not _cached:
        _cached.update(_load())
    return _cached


def save(state: dict[str, Any]) -> None:
    global _written
    recorded = (len(state["payments"]), len(state["attempts"]))
    if recorded != _written:
        _save(state)
        _written = recorded


fake_402mcp.STATE.load = load  # type: ignore[method-assign]
fake_402mcp.STATE.save = save  # type: ignore[method-assign]

if __name__ == "__main__":
    serve("402-mcp", "4.2.1", fake_402mcp.TOOLS, fake_402mcp.call_tool, fake_402mcp.STATE)
