"""A webhook receiver on 127.0.0.1 for alert tests: it records every POST (its path, headers and raw body,
so a signature can be checked over the exact bytes sent) and answers as told."""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio.to_thread

from tests.conftest import WAIT_S

JSON = dict[str, Any]
# A webhook's path is its secret (Slack's are): it must never reach a log.
SECRET_PATH = "/hooks/T0001/B0002/s3cr3t-path"


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def event(self) -> JSON:
        event: JSON = json.loads(self.body)
        return event


class Receiver:
    """A webhook on 127.0.0.1 that records every POST before answering it with the next of `statuses`
    (200 once they run out). With `hang`, each request waits until `release` is set (bounded)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.hang = False
        self.release = threading.Event()
        self._requests: queue.Queue[Received] = queue.Queue()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver._requests.put(Received(self.path, headers, body))
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.hang:
                    receiver.release.wait(WAIT_S)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{SECRET_PATH}?token=q-secret"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def taken(self) -> list[JSON]:
        """Every event received since the last look (without waiting)."""
        return [received.event for received in self.taken_requests()]

    def taken_requests(self) -> list[Received]:
        """Every request received since the last look (without waiting)."""
        requests = []
        while not self._requests.empty():
            received = self._requests.get_nowait()
            assert received.path == SECRET_PATH + "?token=q-secret"
            requests.append(received)
        return requests

    def next(self) -> JSON:
        """The next event received (waiting for it, bounded)."""
        return self.next_request().event

    def next_request(self) -> Received:
        """The next request received (waiting for it, bounded)."""
        try:
            return self._requests.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"the receiver got no request within {WAIT_S}s") from None

    async def next_async(self) -> JSON:
        return await anyio.to_thread.run_sync(self.next)

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT_S)
