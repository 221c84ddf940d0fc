"""A 402-mcp that answers from recordings of the real one (tests/captures/), in order, as it answered.

Run: `REPLAY=<json file> python tests/upstreams/replay_402mcp.py`, or behind the guard:
`guard run -- python tests/upstreams/replay_402mcp.py`. It speaks JSON-RPC lines over stdio itself (no
SDK server in the way), so each answer is the recorded one, byte for byte but for its id.

REPLAY names a JSON list of recordings, each a path relative to tests/captures/ without `.json`
(`402-mcp-4.2.1/paywall-human-09-l402-pay`): `{"request", "response"}` pairs.
- `initialize` and `tools/list` get the answer of the first recording of that method in the list;
- a `tools/call` gets the answer of the next recorded call when it asks exactly what that call asked
  (tool name and arguments); any other call (the guard's own previews, say) gets an `isError` result
  `{"error": "not in the recording"}` and takes nothing from the sequence;
- notifications are read and dropped.
REPLAY_LOG (optional): a file that gets one line per `tools/call`: the recording that answered it, or
`unrecorded <tool>`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
UNRECORDED = {"content": [{"type": "text", "text": '{"error":"not in the recording"}'}], "isError": True}

JSON = dict[str, Any]


def load(names: list[str]) -> list[tuple[str, JSON]]:
    return [(name, json.loads((CAPTURES / f"{name}.json").read_text())) for name in names]


def main() -> None:
    recordings = load(json.loads(Path(os.environ["REPLAY"]).read_text()))
    log = os.environ.get("REPLAY_LOG")
    fixed = {}  # method -> result, for initialize and tools/list
    calls = []
    for name, recording in recordings:
        method = recording["request"]["method"]
        if method == "tools/call":
            calls.append((name, recording))
        else:
            fixed.setdefault(method, recording["response"]["result"])
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message or "method" not in message:
            continue  # a notification, or an answer to nothing it asked
        method = message["method"]
        if method == "tools/call":
            params = message.get("params") or {}
            asked = (params.get("name"), params.get("arguments") or {})
            if calls and asked == _asked(calls[0][1]):
                name, recording = calls.pop(0)
                result, served = recording["response"]["result"], name
            else:
                result, served = UNRECORDED, f"unrecorded {asked[0]}"
            if log:
                with open(log, "a") as out:
                    out.write(served + "\n")
            answer: JSON = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        elif method in fixed:
            answer = {"jsonrpc": "2.0", "id": message["id"], "result": fixed[method]}
        elif method == "ping":
            answer = {"jsonrpc": "2.0", "id": message["id"], "result": {}}
        else:
            answer = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "Method not found"}}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def _asked(recording: JSON) -> tuple[Any, JSON]:
    params = recording["request"]["params"]
    return params["name"], params.get("arguments") or {}


if __name__ == "__main__":
    main()
