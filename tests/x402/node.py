"""A local JSON-RPC endpoint (127.0.0.1) that answers like an EVM node the one call guard makes: `eth_call`
of a token contract's `authorizationState(address,bytes32)`, from the fake chain's state file (tests/x402/
sdk_server.py writes it) or a set of used nonces. `mode` makes it misbehave: "error" (a JSON-RPC error),
"http_500", "garbage" (a result that is no ABI bool), "hang" (answers nothing until it is stopped)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_abi.abi import decode, encode

SELECTOR = "e94a0102"  # authorizationState(address,bytes32)


class Node:
    def __init__(self, used: Callable[[], set[str]], token: str) -> None:
        self.used = used  # nonces (0x-hex, lower case) the chain has seen used
        self.token = token.lower()
        self.mode = "ok"
        self.calls: list[tuple[str, str]] = []  # (payer, nonce) asked about
        self.released = threading.Event()

    def answer(self, request: Any) -> tuple[int, Any]:
        if self.mode == "http_500":
            return 500, {"oops": True}
        if self.mode == "error":
            return 200, {
                "jsonrpc": "2.0",
                "id": request.get("id"),
                "error": {"code": -32000, "message": "header not found"},
            }
        call, block = request["params"]
        assert request["method"] == "eth_call" and block == "latest", request
        data = bytes.fromhex(call["data"].removeprefix("0x"))
        if call["to"].lower() != self.token or data[:4].hex() != SELECTOR:
            return 200, {"jsonrpc": "2.0", "id": request["id"], "error": {"code": 3, "message": "execution reverted"}}
        payer, nonce = decode(["address", "bytes32"], data[4:])
        self.calls.append((payer.lower(), "0x" + nonce.hex()))
        if self.mode == "garbage":
            return 200, {"jsonrpc": "2.0", "id": request["id"], "result": "0x01"}
        used = ("0x" + nonce.hex()) in self.used()
        return 200, {"jsonrpc": "2.0", "id": request["id"], "result": "0x" + encode(["bool"], [used]).hex()}


@contextmanager
def running(node: Node) -> Iterator[str]:
    """Serve `node` on 127.0.0.1 until the block ends; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if node.mode == "hang":
                node.released.wait(30)
                return
            status, body = node.answer(request)
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        node.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
