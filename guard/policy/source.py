"""Where the running guard's policy comes from, and hot reload.

The file is checked for changes once a second (its size, times and inode: an editor that saves by
renaming a new file over the old one is seen too). A valid edit replaces the policy for the next call;
an invalid one is refused and logged, and the old policy stays. Counters and holds live in the ledger,
keyed by tool, window and scope, so a reload never resets them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from guard.core import off_loop
from guard.errors import PolicyError
from guard.policy.files import load
from guard.policy.rules import Policy

logger = logging.getLogger("guard.policy")

WATCH_INTERVAL_S = 1.0

Listener = Callable[[Policy, Policy], Awaitable[None]]


class PolicySource:
    """The current policy, and the file it was read from (None for a policy built in code)."""

    def __init__(self, policy: Policy, path: Path | None = None) -> None:
        self.policy = policy
        self.path = path
        self._signature = _signature(path) if path is not None else None
        self._listeners: list[Listener] = []

    @classmethod
    def from_file(cls, path: Path) -> PolicySource:
        """Raises `PolicyError`."""
        signature = _signature(path)
        policy, _ = load(path)
        source = cls(policy, path)
        source._signature = signature
        return source

    def on_change(self, listener: Listener) -> None:
        """Call `listener(old, new)` after each successful reload."""
        self._listeners.append(listener)

    async def reload(self) -> bool:
        """Read the file again; True when a new policy took effect."""
        if self.path is None:
            return False
        self._signature = _signature(self.path)
        try:
            # In a worker thread: reading a large policy takes seconds, and calls keep being served meanwhile.
            new, _ = await off_loop(load, self.path)
        except PolicyError as exc:
            logger.error("policy %s not reloaded; the previous policy stays in force:\n%s", self.path, exc)
            return False
        old, self.policy = self.policy, new
        logger.info("policy %s reloaded", self.path)
        for listener in self._listeners:
            await listener(old, new)
        return True

    async def watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Reload whenever the file changes, until cancelled."""
        if self.path is None:
            return
        while True:
            await anyio.sleep(interval_s)
            if _signature(self.path) != self._signature:
                await self.reload()


def _signature(path: Path) -> tuple[int, ...] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
