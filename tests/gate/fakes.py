"""The policy gate in front of the fake upstreams of tests/upstreams, in process: what
`guard run --policy P --ledger L -- python tests/upstreams/<fake>.py` builds (a gate with every family's
adapter and x402, a real SQLite ledger file, the audit writer), with the fake's own `call_tool` in place
of the relay and the upstream process. Each fake keeps its record of what left its wallet in its state
file, as it does behind a real guard, so a test cross-checks the ledger against it the same way.

What this leaves out is the relay and the processes (ids, framing, the SDK's serving): the tests that
still start `guard run` cover those."""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from guard.core import Session, ToolCall
from guard.errors import UpstreamError
from guard.gate.gate import PolicyGate
from guard.payments.adapters import family_adapters, x402_adapter
from guard.payments.payments import Payments
from guard.policy.source import PolicySource
from guard.proxy.relay import NOT_RUN
from ledgers import CallRecord
from tests.payments.doubles import RecordingLedger

JSON = dict[str, Any]


class FakeUpstream:
    """A fake of tests/upstreams served in process: its own `call_tool` on its state file. A JSON-RPC error
    it raises becomes the `UpstreamError` the relay would raise (not run for the codes that prove it). It
    is also the session's link: the guard's own calls (previews, balance refreshes) reach it too."""

    def __init__(self, name: str, state_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.module = importlib.import_module(f"tests.upstreams.{name}")
        self.state_file = state_file
        self.own_calls: list[tuple[str, JSON]] = []
        if hasattr(self.module, "STATE"):  # the fake's state: this file, nothing left from another test
            monkeypatch.setattr(self.module.STATE, "path", str(state_file))
            monkeypatch.setattr(self.module.STATE, "_state", {})
            self.module.STATE.save(self.module.STATE.load())  # as the fake does when it starts
        monkeypatch.setenv("SHOP_RECORD", str(state_file))  # tests/upstreams/shop.py's record
        if hasattr(self.module, "call_tool"):
            self._call_tool = self.module.call_tool
        else:
            from tests.upstreams._fake_state import dispatch

            self._call_tool = dispatch(self.module.STATE, self.module.HANDLERS)

    def state(self) -> JSON:
        """The fake's state file: its record of what it was paid."""
        return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]

    def shop_paid(self) -> int:
        """What tests/upstreams/shop.py recorded as paid (its JSON lines)."""
        if not self.state_file.exists():
            return 0
        return sum(json.loads(line)["amount"] for line in self.state_file.read_text().splitlines())

    async def answer(self, name: str, arguments: JSON, meta: JSON | None = None) -> JSON:
        params = types.CallToolRequestParams(name=name, arguments=arguments, _meta=meta)
        try:
            result = await self._call_tool(None, params)
        except MCPError as exc:
            raise UpstreamError(exc.error.code, exc.error.message, not_run=exc.error.code in NOT_RUN) from None
        dumped: JSON = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return dumped

    # the session's link

    async def tools_changed(self) -> None:
        return None

    async def call(self, name: str, arguments: JSON) -> JSON:
        self.own_calls.append((name, arguments))
        return await self.answer(name, arguments)


class Watcher:
    """A `CallWatcher` keeping every call event the gate emits, as emitted (with the fields the ledger does
    not store yet)."""

    def __init__(self) -> None:
        self.events: list[CallRecord] = []

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        self.events.append(call)


@dataclass
class Guarded:
    """A gate in front of a fake upstream; `events` are the call events it emitted."""

    gate: PolicyGate
    source: PolicySource
    ledger: RecordingLedger
    upstream: FakeUpstream
    session: Session
    events: list[CallRecord]

    async def call(
        self, name: str, arguments: JSON | None = None, meta: JSON | None = None, *, session: Session | None = None
    ) -> JSON:
        """A `tools/call` in `session` (the guard's own by default), through the gate to the fake."""
        arguments = arguments or {}
        call = ToolCall(session or self.session, 1, name, arguments, meta)
        return await self.gate.call_tool(call, lambda: self.upstream.answer(name, arguments, meta))

    def state(self) -> JSON:
        return self.upstream.state()


@asynccontextmanager
async def guarded(
    tmp_path: Path,
    fake: str,
    policy: str,
    monkeypatch: pytest.MonkeyPatch,
    *,
    state: JSON | None = None,
    session: str = "s1",
    identity: str | None = None,
) -> AsyncIterator[Guarded]:
    """The gate (policy file, ledger file and the fake's state file in `tmp_path`) with its audit writer
    running; on leaving, the audit trail is written and the ledger closed."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy)
    state_file = tmp_path / f"{fake}-state.json"
    if state is not None:
        state_file.write_text(json.dumps(state))
    source = PolicySource.from_file(policy_file)
    spec = source.policy.spec
    with RecordingLedger.open(tmp_path / "ledger.db") as ledger:
        upstream = FakeUpstream(fake, state_file, monkeypatch)
        server = spec.server or fake
        payments = Payments(ledger, family_adapters(spec.preset), x402_adapter(spec.assets), server)
        watcher = Watcher()
        gate = PolicyGate(source, ledger, server, payments, watchers=[watcher])
        guard = Guarded(gate, source, ledger, upstream, Session(session, identity), watcher.events)
        gate.subscribe(guard.session, upstream)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(gate.audit.write)
            yield guard
            tasks.cancel_scope.cancel()
