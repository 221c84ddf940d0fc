"""TEMP shim, dropped at merge with the payments engineer's branch (whose writers set the structured facts
themselves: `CallRecord.kind` and `balance_key` on every denial, `BalanceObservation.money` in the
adapters, and `_explain` reading `observation.money` instead of `MONEY_BALANCES`).

Until then, the facts a writer leaves unset are read from its rule's name and words as the v6 migration
reads old rows, and money balances from their key prefixes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from ledgers._records import BalanceObservation, CallRecord, RuleKind
from ledgers._schema import _old_facts

MONEY_BALANCES = ("p402:", "wallet:")


def with_facts(call: CallRecord) -> CallRecord:
    if call.decision != "deny" or call.kind is not None or call.rule is None:
        return call
    kind, balance_key = _old_facts(call.rule, call.reason)
    return replace(call, kind=cast("RuleKind | None", kind), balance_key=call.balance_key or balance_key)


def with_money(observation: BalanceObservation) -> BalanceObservation:
    return replace(observation, money=observation.money or observation.key.startswith(MONEY_BALANCES))
