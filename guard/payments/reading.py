"""Which adapter reads a call, and its answer: x402 first (any server may speak it), then the family
adapter that knows the tool (the policy's preset first). A tool that is a variant of a family's paying
tool (case, width, dashes) is read as paying and refused: an upstream that normalises names may run it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from guard.core import ToolCall
from guard.names import folded
from guard.payments.adapters._facts import Adapter, Outcome, Prepared

logger = logging.getLogger("guard.payments")


@dataclass(frozen=True)
class Reading:
    """An adapter's view of one call: who reads it and what it said before forwarding."""

    adapter: Adapter | None
    prepared: Prepared | None

    @property
    def pays(self) -> bool | None:
        """True/False when an adapter knows; None when the policy's `pays` must decide."""
        return self.prepared.pays if self.prepared is not None else None

    @property
    def refusal(self) -> str | None:
        """Why the adapter cannot let this call pay (an unreadable invoice, a variant name), if it cannot."""
        return self.prepared.refuse if self.prepared is not None else None


NOT_READ = Reading(None, None)


class Readers:
    """The adapters guard reads calls and answers with: the upstream family's, and x402."""

    def __init__(self, adapters: Sequence[Adapter], x402: Adapter | None = None) -> None:
        self._adapters = list(adapters)
        self._x402 = x402
        # Each adapter's tools by their folded name (the first of a fold), folded once, not on every call.
        self._variants = [_by_fold(adapter.tools) for adapter in self._adapters]

    def read(self, call: ToolCall) -> Reading:
        """The adapter that reads this call, and what it says. An x402 payment in `_meta` wins."""
        if self._x402 is not None:
            prepared = self._x402.prepare(call.name, call.arguments, call.meta)
            if prepared.pays:
                return Reading(self._x402, prepared)
        variant = folded(call.name)
        for adapter, variants in zip(self._adapters, self._variants, strict=True):
            if adapter.knows(call.name):
                return Reading(adapter, adapter.prepare(call.name, call.arguments, call.meta))
            if (known := variants.get(variant)) is not None:
                # An upstream that normalises names may run it as `known`, a tool that pays: never unpriced.
                why = f"{call.name!r} is a variant of {adapter.name}'s tool {known!r}: call it by its exact name"
                return Reading(adapter, Prepared(pays=True, refuse=why))
        return NOT_READ

    def unsigned_x402(self, reading: Reading) -> bool:
        """Whether guard reads x402 and no adapter claims this call: an x402 payment is a signature in
        `_meta`, so without one the call cannot move money through x402 (what else it does, the policy says)."""
        return self._x402 is not None and reading.adapter is None

    def outcome(self, call: ToolCall, reading: Reading, result: Any) -> Outcome:
        """What the answer says happened. Never raises: an answer the adapter cannot read (its bug) is
        `unknown`, so the hold stays counted, in doubt."""
        try:
            return self._outcome(call, reading, result)
        except Exception:
            logger.exception("could not read the answer to %s", call.name)
            return Outcome("unknown", problem="the guard could not read the upstream's answer")

    def _outcome(self, call: ToolCall, reading: Reading, result: Any) -> Outcome:
        if not isinstance(result, dict):
            return Outcome("unknown", problem="the upstream's result is not an object")
        if self._x402 is not None:
            x402 = self._x402.outcome(call.name, call.arguments, call.meta, result)
            if reading.adapter is self._x402 or x402.state != "no_payment" or x402.quotes:
                return x402
        if reading.adapter is not None:
            return reading.adapter.outcome(call.name, call.arguments, call.meta, result)
        # No adapter knows this tool: a policy-priced call counts its price when it answers.
        return Outcome("paid")

    def refresher(self, key: str) -> Adapter | None:
        """The family adapter that knows how to refresh the balance `key`, if one does."""
        return next((a for a in self._adapters if a.refresh(key) is not None), None)


def _by_fold(tools: Iterable[str]) -> dict[str, str]:
    """`tools` by their folded name; of two with one fold, the first."""
    by_fold: dict[str, str] = {}
    for tool in tools:
        by_fold.setdefault(folded(tool), tool)
    return by_fold
