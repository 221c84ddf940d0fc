"""Warm starts (`--warm N`): per-session upstreams started and initialised before a client asks for one.

A new handshake-era session takes one whose handshake fits its own (the same protocol version and client
capabilities: an upstream may offer tools by what the client said it can do, as server-everything does for
sampling and elicitation); its `initialize` is answered from the upstream's cached InitializeResult under the
client's id (a `SharedUpstream` with one client). A session that does not fit starts cold, and the pool
follows it: later warm upstreams are initialised with that session's version and capabilities (the upstream
sees guard's client info, not the client's). A taken upstream is replaced in the background; a warm one that
dies waiting is dropped and replaced; every one still waiting is stopped with the guard. Warm upstreams count
toward no session limit: no client sees them.
"""

from __future__ import annotations

import logging
from collections import deque
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from guard.errors import UpstreamStartError
from guard.proxy import upstream
from guard.proxy.sharing import SharedUpstream
from guard.proxy.upstream import UpstreamSpec

logger = logging.getLogger("guard.warm")

CLIENT_INFO = {"name": "guard", "version": "warm"}
# Warm upstreams started at once to replace taken ones.
REFILLS_AT_ONCE = 1
# After a warm upstream could not be started, how long before the pool tries again.
RETRY_S = 5.0


def handshake(protocol_version: str, capabilities: dict[str, Any]) -> dict[str, Any]:
    """The `initialize` params a warm upstream is started with."""
    return {"protocolVersion": protocol_version, "capabilities": capabilities, "clientInfo": CLIENT_INFO}


class WarmPool:
    """Keeps `size` started, initialised upstreams ready for per-session clients."""

    def __init__(self, spec: UpstreamSpec, size: int) -> None:
        self._spec = spec
        self._size = size
        self._ready: deque[SharedUpstream] = deque()
        self._starting = 0
        self._filled = False
        self._wanted = anyio.Event()
        self.params = handshake(HANDSHAKE_PROTOCOL_VERSIONS[-1], {})

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Fill the pool, and refill it whenever an upstream is taken or lost, until cancelled."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                self._ready = deque(one for one in self._ready if one.open)
                # The first fill starts them all at once; a refill one at a time, so that sessions opening in a
                # burst do not share the machine with as many upstream starts.
                most = self._size if not self._filled else REFILLS_AT_ONCE
                while len(self._ready) + self._starting < self._size and self._starting < most:
                    self._starting += 1
                    tg.start_soon(self._start_one, tg)
                self._wanted = anyio.Event()
                await self._wanted.wait()

    def take(self, initialize: dict[str, Any] | None) -> SharedUpstream | None:
        """A ready upstream initialised as `initialize` asks, or None (the session starts cold)."""
        if initialize is None:
            return None
        self._wanted.set()  # whatever happens, the pool is looked at again
        wanted = handshake(initialize.get("protocolVersion", ""), initialize.get("capabilities") or {})
        if not _fits(wanted, self.params):
            logger.info("a session's handshake differs from the warm upstreams': it starts cold; the pool follows it")
            self.params = wanted
            for stale in self._ready:
                stale.close()
            self._ready.clear()
            return None
        while self._ready:
            one = self._ready.popleft()
            if one.open:
                return one
        return None

    async def _start_one(self, tg: TaskGroup) -> None:
        one = SharedUpstream(self._spec.label, linger_s=0.0)
        params = self.params
        failed = False
        try:
            await tg.start(one.serve, partial(upstream.connect, self._spec))
            if one.start_failure is not None:
                raise UpstreamStartError(one.start_failure)
            await one.initialize(params)
            if params is self.params:
                self._ready.append(one)
                if len(self._ready) == self._size:
                    self._filled = True
                    logger.info("%d warm upstreams ready (--warm)", self._size)
            else:  # the pool followed a client meanwhile
                one.close()
        except (UpstreamStartError, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
            logger.warning("could not start a warm upstream: %s", exc)
            one.close()
            failed = True
        finally:
            self._starting -= 1
        if failed:
            await anyio.sleep(RETRY_S)
        self._wanted.set()


def _fits(wanted: dict[str, Any], warm: dict[str, Any]) -> bool:
    return bool(wanted["protocolVersion"] == warm["protocolVersion"] and wanted["capabilities"] == warm["capabilities"])
