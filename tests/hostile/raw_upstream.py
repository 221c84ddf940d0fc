"""A hand-written MCP upstream over stdio that trusts every line it reads, as a careless server does.

It runs a `tools/call` whether or not it has an id (a notification too), and appends each run to the file
RAW_UPSTREAM_RUNS as a JSON line `{"tool": name, "id": id or null}`. Tools:
- `launch`: answers "launched" at once (when the call has an id).
- `late`: answers only once it is cancelled (`notifications/cancelled` naming the id it was sent): then
  twice over, and once more under an id it was never sent.
- `fail {code}`: answers with a JSON-RPC error of that code.
- `huge`: answers with a line of 65 MiB (over what guard reads from an upstream).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("launch", "late", "fail")]


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def result(request_id: Any, value: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "result": value})


def text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}], "isError": False}


def main() -> None:
    runs = open(os.environ["RAW_UPSTREAM_RUNS"], "a")  # open for the process's life
    waiting: set[Any] = set()  # ids of `late` calls not yet cancelled
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        method, request_id, params = message.get("method"), message.get("id"), message.get("params") or {}
        if method == "initialize":
            result(
                request_id,
                {
                    "protocolVersion": params.get("protocolVersion"),
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "raw-upstream", "version": "1"},
                },
            )
        elif method == "ping":
            result(request_id, {})
        elif method == "tools/list":
            result(request_id, {"tools": TOOLS})
        elif method == "tools/call":
            name = params.get("name")
            runs.write(json.dumps({"tool": name, "id": request_id}) + "\n")
            runs.flush()
            if "id" not in message:
                continue
            if name == "late":
                waiting.add(request_id)
            elif name == "huge":
                result(request_id, text("x" * 65 * 1024 * 1024))
            elif name == "fail":
                code = (params.get("arguments") or {}).get("code")
                send({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": f"failed with {code}"}})
            else:
                result(request_id, text("launched"))
        elif method == "notifications/cancelled" and params.get("requestId") in waiting:
            cancelled = params["requestId"]
            waiting.discard(cancelled)
            for answered in (cancelled, cancelled, f"never-sent-{cancelled}"):
                result(answered, text("late"))


if __name__ == "__main__":
    main()
