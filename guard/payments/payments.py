"""`Payments`: where adapters' facts meet the ledger, as the gate and the scheduler use it.

    before forwarding   bound      decision.py     the price, the cap, the budgets, the balances: a Bound or a denial
    after the answer    settle     settlement.py   the hold settled, voided or in doubt; what the answer reveals
    no answer           unanswered settlement.py   voided when the tool did not run, else in doubt
    on a schedule       refresh_due balances.py    every balance due asked again
                        reconcile_on_chain chains.py  x402 payments in doubt, as the chain says

Beneath them: `reading` (which adapter reads a call and its answer), `learning` (what an answer reveals,
and the guard's own calls upstream), `reconcile` (proofs and balance moves against what was counted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from guard.core import SessionLink, ToolCall, off_loop
from guard.payments import balances, chains, decision, settlement
from guard.payments.adapters._facts import Adapter
from guard.payments.decision import Bound
from guard.payments.reading import Readers
from guard.payments.settlement import Settled
from guard.policy.rules import Denial, Policy, Who
from ledgers import CallRecord, Ledger


class Payments:
    """The adapters (the upstream family's, and x402, which any server may speak) and the ledger.
    `server` names the upstream in what the guard records of its own calls."""

    def __init__(
        self, ledger: Ledger, adapters: Sequence[Adapter], x402: Adapter | None = None, server: str = "upstream"
    ) -> None:
        self._ledger = ledger
        self._readers = Readers(adapters, x402)
        self._server = server

    async def bound(self, policy: Policy, call: ToolCall, who: Who, link: SessionLink | None) -> Bound | Denial:
        """The money decision for `call`: a `Bound` to reserve (or nothing, when it does not pay), or a
        denial. `link` reaches the session's upstream, for a price preview or a balance refresh. An x402
        payment's signed authorization is kept before it is reserved, so the chain can settle its hold."""
        money = await decision.bound(self._ledger, self._readers, policy, call, who, link)
        if isinstance(money, Bound) and money.price is not None and money.authorization is not None:
            await off_loop(self._ledger.remember_authorization, money.authorization)
        return money

    async def settle(
        self,
        policy: Policy,
        call: ToolCall,
        who: Who,
        money: Bound,
        result: Any,
        hold: int | None,
        event: Callable[[Settled], CallRecord] | None = None,
    ) -> Settled:
        """Settle, void or keep in doubt the call's hold as its answer says; learn what the answer reveals;
        the call's event (`event` makes it) written with them, in one transaction (see `settlement.settle`)."""
        return await settlement.settle(self._ledger, self._readers, policy, call, who, money, result, hold, event)

    async def unanswered(self, hold: int, tool: str, *, not_run: bool = False) -> None:
        """The forwarded call got no answer: void its hold when the tool did not run, else keep it in doubt."""
        await settlement.unanswered(self._ledger, hold, tool, not_run=not_run)

    async def reconcile_on_chain(self, policy: Policy) -> list[chains.Checked]:
        """Ask the policy's chains about the x402 payments in doubt; settle or void what they prove."""
        return await chains.reconcile(self._ledger, chains.nodes(policy))

    async def refresh_due(self, policy: Policy, links: Callable[[], list[SessionLink]]) -> int:
        """Ask the upstream again for every known balance older than `refresh_every`; return how many answered."""
        return await balances.refresh_due(self._ledger, self._readers, policy, links, self._server)
