"""Holds: two-phase spend. A paying call reserves its most before it is forwarded, in the transaction
that checks its budgets and rate limits; its hold is settled at what was paid, or voided, after.

A hold moves through phases, each written durably before the step it allows:

    reserved ──mark_forwarded──► forwarded ──settle──► settled
        │                            │  └────void────► voided
        ├──settle / void             └──mark_in_doubt──► in_doubt ──resolve──► settled | voided

A crash leaves `reserved` holds (never forwarded: voided at recovery) and `forwarded` holds (the money
may have left: kept counted as `in_doubt` until resolved). A hold resolves at most once. `STEPS` is this
diagram as a table: every step checks the hold's phase and writes the next one in one statement.

A paying call costs two durable writes: `reserve(forwarded=True)` checks, reserves and marks the hold
forwarded in one transaction (the hold is born `forwarded`: `reserved` is skipped, never a phase the
call's path waits on), and `conclude` writes everything its answer decided in another.

What was paid is recorded whole, above the hold too: each budget's charge becomes the paid amount in
its unit (rounded up), and a budget then over its limit refuses every further reservation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal, NoReturn

from sqlalchemy import Connection, Row
from sqlalchemy.exc import IntegrityError

from ledgers._approvals import spend_approval
from ledgers._audit import INSERT_CALL, call_row
from ledgers._errors import AlreadyPaid, AmountError, HoldStateError, PaymentInFlight, Refused, UnitMismatch
from ledgers._freezes import check_frozen
from ledgers._money import Amount, Rates
from ledgers._observations import NamedQuote, insert_observation, store_quote
from ledgers._part import Part
from ledgers._records import BalanceObservation, Budget, CallRecord, HoldInfo, RateLimit
from ledgers._schema import MAYBE_PAID, OPEN_PHASES
from ledgers._store import columns, run, sql_list
from ledgers._time import from_us, to_us
from ledgers._windows import check_budget, check_rate, count_calls, define_budgets


@dataclass(frozen=True)
class Step:
    """A hold's move from one of the phases `start` to the phase `end`."""

    start: tuple[str, ...]
    end: str


# The steps an answer (or its absence) takes a forwarded hold by (`Holds.conclude`).
AnswerStep = Literal["settle", "void", "mark_in_doubt"]

StepName = Literal[
    "mark_forwarded", "settle", "void", "mark_in_doubt", "resolve", "resolve_unpaid", "recover_unsent", "recover_sent"
]

# The state diagram above, once: which phases each step may start from, and where it leads.
STEPS: dict[StepName, Step] = {
    "mark_forwarded": Step(("reserved",), "forwarded"),
    "settle": Step(("reserved", "forwarded"), "settled"),
    "void": Step(("reserved", "forwarded"), "voided"),
    "mark_in_doubt": Step(("forwarded",), "in_doubt"),
    "resolve": Step(("in_doubt",), "settled"),  # the outcome became known: it was paid
    "resolve_unpaid": Step(("in_doubt",), "voided"),  # ...or nothing was
    "recover_unsent": Step(("reserved",), "voided"),  # its process is gone and never forwarded it
    "recover_sent": Step(("forwarded",), "in_doubt"),  # its process is gone: the payment may have left
}

# A hold's columns as `HoldInfo` reads them (see `hold_info`).
HOLD_COLUMNS = (
    "id",
    "phase",
    "unit",
    "amount",
    "settled",
    "idempotency_key",
    "created_us",
    "session",
    "identity",
    "tool",
    "balance_key",
    "server",
    "resource",
    "priced_by",
)
SELECT_HOLDS = f"SELECT {columns(HOLD_COLUMNS)} FROM ledger_holds"


@dataclass(frozen=True)
class Reserved:
    """A shadowed reservation: its hold, and the refusal a shadowed budget or rate limit would have made."""

    hold: int
    would_refuse: Refused | None


def _unless_shadowed(check: Callable[[], None], shadowed: bool, would: list[Refused]) -> None:
    """Run a budget's or rate limit's check: a shadowed one's refusal is noted, not raised."""
    try:
        check()
    except Refused as exc:
        if not shadowed:
            raise
        would.append(exc)


@dataclass(frozen=True)
class Where:
    """Who made a payment, where it went, what bounded it: a hold's descriptive columns."""

    session: str | None = None
    identity: str | None = None
    tool: str | None = None
    balance_key: str | None = None
    server: str | None = None
    resource: str | None = None
    priced_by: str | None = None


class Holds(Part):
    def reserve(
        self,
        budgets: Sequence[Budget],
        amount: Amount,
        *,
        idempotency_key: str | None = None,
        rate_limits: Sequence[RateLimit] = (),
        session: str | None = None,
        identity: str | None = None,
        tool: str | None = None,
        balance_key: str | None = None,
        server: str | None = None,
        resource: str | None = None,
        priced_by: str | None = None,
        rates: Rates | None = None,
        frozen_scopes: Sequence[str] = (),
        forwarded: bool = False,
        approval: str | None = None,
    ) -> int:
        """Check that none of `frozen_scopes` is frozen (the kill switch), then every budget and rate
        limit and, in the same transaction, write the hold (and the calls the rate limits count).
        `balance_key` names the balance the payment draws on (see `spent_from`); `server` and `resource`
        (a URL without its query) are for reports, `priced_by` what bounded `amount` (a quote, a cap).
        `rates` (default: the ledger's own) converts `amount` into each budget's unit, rounded up; the
        charge stored is that figure, and settling scales it, so a later change of rates never rewrites
        it. Returns the hold id.

        `forwarded`: the call is sent upstream as soon as this returns, so the hold is born `forwarded`
        (`mark_forwarded` in the same transaction: one durable write, not two). Should the guard die
        before the request reaches the upstream, the hold is in doubt all the same (recovery never voids
        a `forwarded` hold): exactly as after a separate `mark_forwarded`, never voided silently.
        `approval`: a human's approval this call goes ahead under, used up in the same transaction.

        Raises:
            Frozen: an operator froze one of `frozen_scopes` (the kill switch). Nothing written.
            ApprovalError: `approval` is not approved, was used already, or expired. Nothing written.
            BudgetExceeded / RateLimited: which rule, what remains, when to retry. Nothing written.
            PaymentInFlight / AlreadyPaid: the idempotency key is open, or was paid. Nothing written.
            AmountError / UnitMismatch: an amount or unit is wrong. Nothing written.
        """
        where = Where(session, identity, tool, balance_key, server, resource, priced_by)
        hold, _ = self._reserve(
            budgets, amount, idempotency_key, rate_limits, where, rates, frozen_scopes, (), forwarded, approval
        )
        return hold

    def reserve_shadowed(
        self,
        budgets: Sequence[Budget],
        amount: Amount,
        *,
        shadow: Collection[str],
        idempotency_key: str | None = None,
        rate_limits: Sequence[RateLimit] = (),
        session: str | None = None,
        identity: str | None = None,
        tool: str | None = None,
        balance_key: str | None = None,
        server: str | None = None,
        resource: str | None = None,
        priced_by: str | None = None,
        rates: Rates | None = None,
        frozen_scopes: Sequence[str] = (),
        forwarded: bool = False,
        approval: str | None = None,
    ) -> Reserved:
        """`reserve`, but the budgets and rate limits whose key (`Budget.key`, `RateLimit.key`) is in
        `shadow` (shadow mode) do not refuse: the hold and its charges are written anyway, over the limit
        if need be (the money moves, so the ledger counts it), and the first refusal they would have made
        is returned with the hold. Freezes, the idempotency key, the approval and every key not in `shadow`
        refuse as `reserve` does (same exceptions, nothing written); `forwarded` as in `reserve`."""
        where = Where(session, identity, tool, balance_key, server, resource, priced_by)
        hold, would = self._reserve(
            budgets, amount, idempotency_key, rate_limits, where, rates, frozen_scopes, shadow, forwarded, approval
        )
        return Reserved(hold, would)

    def _reserve(
        self,
        budgets: Sequence[Budget],
        amount: Amount,
        idempotency_key: str | None,
        rate_limits: Sequence[RateLimit],
        where: Where,
        rates: Rates | None,
        frozen_scopes: Sequence[str],
        shadow: Collection[str],
        forwarded: bool = False,
        approval: str | None = None,
    ) -> tuple[int, Refused | None]:
        if not isinstance(amount, Amount):
            raise AmountError(f"reserve() needs an Amount, not {type(amount).__name__} {amount!r}")
        rates = rates if rates is not None else self._rates
        charges = [(b, amount.to(b.limit.unit, rates=rates, rounding="up").value) for b in budgets]
        keys = sorted({b.key for b in budgets} | {r.lock_key for r in rate_limits})
        would: list[Refused] = []
        with self._store.write(lock_keys=keys) as conn:
            now = self._store.now_us()
            check_frozen(conn, frozen_scopes)  # never shadowed: an operator's freeze always refuses
            if idempotency_key is not None:
                check_key(conn, idempotency_key)
            for rate in rate_limits:
                _unless_shadowed(partial(check_rate, conn, rate, now), rate.key in shadow, would)
            for budget, value in charges:
                _unless_shadowed(partial(check_budget, conn, budget, value, now), budget.key in shadow, would)
            if approval is not None:
                spend_approval(conn, approval, now)
            phase = STEPS["mark_forwarded"].end if forwarded else "reserved"
            hold_id = self._insert_hold(conn, amount, idempotency_key, now, where, _mixed(budgets, amount), phase)
            defined = define_budgets(conn, budgets, now, self._defined)
            _insert_charges(conn, hold_id, charges, now, held=True)
            count_calls(conn, rate_limits, now)
        self._defined |= defined
        return hold_id, (would[0] if would else None)

    def charge(
        self,
        budgets: Sequence[Budget],
        amount: Amount,
        *,
        balance_key: str | None = None,
        session: str | None = None,
        tool: str | None = None,
        server: str | None = None,
        rates: Rates | None = None,
    ) -> int:
        """Record spend that already happened (seen only in a balance): a settled hold counted against
        `budgets` (converted with `rates`, default the ledger's own), never refused (the money is gone).
        Returns the hold id."""
        rates = rates if rates is not None else self._rates
        charges = [(b, amount.to(b.limit.unit, rates=rates, rounding="up").value) for b in budgets]
        where = Where(session=session, tool=tool, balance_key=balance_key, server=server)
        with self._store.write(lock_keys=sorted({b.key for b in budgets})) as conn:
            now = self._store.now_us()
            hold_id = self._insert_hold(conn, amount, None, now, where, _mixed(budgets, amount), "reserved")
            defined = define_budgets(conn, budgets, now, self._defined)
            run(
                conn,
                "UPDATE ledger_holds SET phase = 'settled', settled = :p, updated_us = :t, external = :x WHERE id = :h",
                {"p": amount.value, "t": now, "h": hold_id, "x": True},
            )
            _insert_charges(conn, hold_id, charges, now, held=False)
        self._defined |= defined
        return hold_id

    def mark_forwarded(self, hold_id: int) -> None:
        """Record that the paying call is about to be sent upstream (before it is sent)."""
        self._move(hold_id, STEPS["mark_forwarded"])

    def settle(self, hold_id: int, actual: Amount) -> None:
        """The call finished; `actual` was paid. All of it is recorded, above the hold too: then each
        budget's charge is `actual` in its unit (rounded up), the budget may go over its limit, and every
        further reservation against it is refused (see `HoldInfo.over_reservation`)."""
        with self._store.write() as conn:
            finish(conn, hold_id, STEPS["settle"], actual, self._store.now_us(), self._rates)

    def void(self, hold_id: int) -> None:
        """Provably nothing was paid: release the hold."""
        with self._store.write() as conn:
            finish(conn, hold_id, STEPS["void"], None, self._store.now_us(), self._rates)

    def mark_in_doubt(self, hold_id: int) -> None:
        """The outcome is unknown (timeout, crash, `paymentState: unknown`): keep it counted in full."""
        self._move(hold_id, STEPS["mark_in_doubt"])

    def resolve(self, hold_id: int, actual: Amount, event: CallRecord | None = None) -> None:
        """An in-doubt hold's outcome became known: `actual` was paid (zero: nothing was, and the hold is
        voided), recorded whole as `settle` records it. `event`, the call event saying so, is written to
        the audit trail in the same transaction: a resolution is never without its record, nor the
        record without it."""
        paid = actual if actual.value else None
        with self._store.write() as conn:
            now = self._store.now_us()
            finish(conn, hold_id, STEPS["resolve" if paid else "resolve_unpaid"], paid, now, self._rates)
            if event is not None:
                run(conn, INSERT_CALL, call_row(event, now))

    def name_payment(self, hold_id: int, idempotency_key: str) -> bool:
        """Give a hold the payment id its answer revealed (a 402's payment hash), so that payment cannot
        be made again while the hold is open and a later proof can find it. False when another open
        or settled hold has that id already (the hold keeps none)."""
        with self._store.write() as conn:
            return self._name_payment(conn, hold_id, idempotency_key)

    def conclude(
        self,
        hold_id: int | None,
        step: AnswerStep | None = None,
        paid: Amount | None = None,
        *,
        payment_id: str | None = None,
        observations: Sequence[BalanceObservation] = (),
        quotes: Sequence[NamedQuote] = (),
        event: CallRecord | None = None,
    ) -> bool:
        """All that a forwarded call's answer decided, in one transaction (one durable write): the payment
        the answer names given to the hold (as `name_payment`), the hold's `step` (`settle` at `paid`, as
        `settle` records it; `void`; `mark_in_doubt`), the balances it observed, the prices it named, and
        the call's event. A crash leaves all of it unwritten: the hold `forwarded`, so in doubt. Returns
        False when another hold has `payment_id` already (this one keeps none).

        Raises:
            HoldStateError: the hold's phase does not allow `step`. Nothing written.
            AmountError: an observation's or a quote's amount is not an Amount. Nothing written."""
        with self._store.write() as conn:
            now = self._store.now_us()
            named = True
            if hold_id is not None and payment_id is not None:
                named = self._name_payment(conn, hold_id, payment_id)
            if hold_id is not None and step == "mark_in_doubt":
                _move(conn, hold_id, STEPS[step], now)
            elif hold_id is not None and step is not None:
                finish(conn, hold_id, STEPS[step], paid if step == "settle" else None, now, self._rates)
            for observation in observations:
                insert_observation(conn, observation, now)
            for quote in quotes:
                store_quote(conn, quote, now)
            if event is not None:
                run(conn, INSERT_CALL, call_row(event, now))
        return named

    def _name_payment(self, conn: Connection, hold_id: int, idempotency_key: str) -> bool:
        try:  # inside the transaction: the write transaction would take a refusal for a failure
            with self._store.savepoint(conn):
                named = run(
                    conn,
                    "UPDATE ledger_holds SET idempotency_key = :k WHERE id = :h AND idempotency_key IS NULL",
                    {"k": idempotency_key, "h": hold_id},
                ).rowcount
        except IntegrityError:
            return False
        return bool(named)

    def hold(self, hold_id: int) -> HoldInfo:
        """The hold `hold_id` as it is now.

        Raises:
            HoldStateError: there is no such hold."""
        with self._store.read() as conn:
            row = run(conn, f"{SELECT_HOLDS} WHERE id = :id", {"id": hold_id}).first()
        if row is None:
            raise HoldStateError(f"hold {hold_id} does not exist")
        return hold_info(row)

    def hold_for_payment(self, idempotency_key: str) -> HoldInfo | None:
        """The hold that is not voided for this payment (a payment hash, an x402 nonce), if any."""
        with self._store.read() as conn:
            row = run(
                conn,
                f"{SELECT_HOLDS} WHERE idempotency_key = :k AND phase != 'voided'",
                {"k": idempotency_key},
            ).first()
        return hold_info(row) if row is not None else None

    def open_holds(self, phase: str | None = None) -> list[HoldInfo]:
        """Holds not yet resolved (reserved, forwarded, in doubt), oldest first; or those in `phase`."""
        # `phase` comes from an operator: a parameter, never SQL.
        where, params = ("phase = :p", {"p": phase}) if phase else (f"phase IN {sql_list(OPEN_PHASES)}", {})
        with self._store.read() as conn:
            rows = run(conn, f"{SELECT_HOLDS} WHERE {where} ORDER BY id", params).all()
        return [hold_info(row) for row in rows]

    def spent_from(self, balance_key: str, since: datetime) -> list[Amount]:
        """What this ledger's payments took from a balance since a moment, one Amount per unit: settled
        amounts, and in-doubt ones in full (they may have left)."""
        with self._store.read() as conn:
            rows: Any = run(
                conn,
                "SELECT unit, SUM(CASE WHEN phase = 'settled' THEN settled ELSE amount END) FROM ledger_holds"
                f" WHERE balance_key = :k AND updated_us > :s AND phase IN {sql_list(MAYBE_PAID)} GROUP BY unit",
                {"k": balance_key, "s": to_us(since)},
            ).all()
        return [Amount(int(row[1]), row[0]) for row in rows if row[1]]

    def _move(self, hold_id: int, step: Step) -> None:
        with self._store.write() as conn:
            _move(conn, hold_id, step, self._store.now_us())

    def _insert_hold(
        self, conn: Connection, amount: Amount, key: str | None, now: int, where: Where, mixed: bool, phase: str
    ) -> int:
        described = asdict(where)
        try:
            with self._store.savepoint(conn):
                hold_id: Any = run(
                    conn,
                    "INSERT INTO ledger_holds (idempotency_key, phase, unit, amount, owner, mixed_units, created_us,"
                    f" updated_us, {columns(list(described))}) VALUES (:key, :phase, :unit, :amount, :owner,"
                    f" :mixed, :now, :now, {columns(list(described), ':')}) RETURNING id",
                    {
                        "key": key,
                        "phase": phase,
                        "unit": amount.unit,
                        "amount": amount.value,
                        "owner": self.owner,
                        "mixed": mixed,
                        "now": now,
                        **described,
                    },
                ).scalar_one()
        except IntegrityError:
            # Another process reserved the same key between our check and our insert (PostgreSQL).
            raise PaymentInFlight(
                f"payment {key} is already in progress: paying again could pay twice", rule="idempotency"
            ) from None
        return int(hold_id)


# Inside a transaction


def check_key(conn: Connection, key: str) -> None:
    """Refuse a payment id held open or settled already: paying it again could pay twice."""
    phase = run(
        conn, "SELECT phase FROM ledger_holds WHERE idempotency_key = :k AND phase != 'voided'", {"k": key}
    ).scalar()
    if phase == "settled":
        raise AlreadyPaid(f"payment {key} was already made", rule="idempotency")
    if phase is not None:
        raise PaymentInFlight(
            f"payment {key} is already {'in doubt' if phase == 'in_doubt' else 'in progress'}:"
            " paying again could pay twice",
            rule="idempotency",
        )


def _move(conn: Connection, hold_id: int, step: Step, now: int) -> None:
    """A step that moves no money: only the phase changes."""
    moved = run(
        conn,
        f"UPDATE ledger_holds SET phase = :p, updated_us = :t WHERE id = :h AND phase IN {sql_list(step.start)}",
        {"p": step.end, "t": now, "h": hold_id},
    ).rowcount
    if not moved:
        _refuse(conn, hold_id, step)


def finish(conn: Connection, hold_id: int, step: Step, actual: Amount | None, now: int, rates: Rates | None) -> None:
    """Take `step`, a settlement at `actual` (or, for None, a release), in as few statements as the hot
    path allows: the phase is checked by the UPDATE that writes the next one."""
    if actual is None:
        voided = run(
            conn,
            f"UPDATE ledger_holds SET phase = :p, updated_us = :t WHERE id = :h AND phase IN {sql_list(step.start)}",
            {"p": step.end, "t": now, "h": hold_id},
        ).rowcount
        if not voided:
            _refuse(conn, hold_id, step)
        run(conn, "UPDATE ledger_charges SET held = 0 WHERE hold_id = :h", {"h": hold_id})
        return
    settled = run(
        conn,
        "UPDATE ledger_holds SET phase = :p, settled = :v, updated_us = :t"
        f" WHERE id = :h AND phase IN {sql_list(step.start)} AND unit = :u RETURNING mixed_units, amount",
        {"p": step.end, "v": actual.value, "t": now, "h": hold_id, "u": actual.unit},
    ).first()
    if settled is not None:
        unit, paid, mixed, reserved = actual.unit, actual.value, bool(settled.mixed_units), int(settled.amount)
    else:  # another unit than the hold's, or a step the phase does not allow
        unit, reserved = _unit_if_allowed(conn, hold_id, step)
        paid = actual.to(unit, rounding="up").value
        run(
            conn,
            "UPDATE ledger_holds SET phase = :p, settled = :v, updated_us = :t WHERE id = :h",
            {"p": step.end, "v": paid, "t": now, "h": hold_id},
        )
        mixed = True
    # What was paid is what is spent, all of it: above the hold too (the ledger never says less than
    # what left; the budget may go over its limit, and then refuses every reservation).
    run(
        conn,
        "UPDATE ledger_charges SET spent = :p, held = 0 WHERE hold_id = :h AND unit = :u",
        {"p": paid, "h": hold_id, "u": unit},
    )
    if not mixed:
        return
    others = run(
        conn,
        "SELECT id, unit, held FROM ledger_charges WHERE hold_id = :h AND unit != :u",
        {"h": hold_id, "u": unit},
    ).all()
    for charge in others:
        spent = _in_charge_unit(paid, reserved, int(charge.held), Amount(paid, unit), charge.unit, rates)
        run(conn, "UPDATE ledger_charges SET held = 0, spent = :s WHERE id = :c", {"s": spent, "c": charge.id})


def _in_charge_unit(paid: int, reserved: int, held: int, actual: Amount, unit: str, rates: Rates | None) -> int:
    """What a payment of `paid` (in the hold's unit) counts in a charge of another unit. Units that
    convert by themselves (sat, msat) convert exactly, rounded up. Others keep the rate the reservation
    used: the charge held at reserve scaled by paid / reserved, rounded up (never less than the exact
    figure at that rate), so rates edited since never rewrite it and one no longer written cannot fail a
    settlement. A hold of nothing has no rate to scale by: `rates` convert it."""
    try:
        return actual.to(unit, rounding="up").value
    except UnitMismatch:
        if reserved == 0:
            return actual.to(unit, rates=rates, rounding="up").value
    return Amount(-(-held * paid // reserved), unit).value


def hold_info(row: Row[Any]) -> HoldInfo:
    """A row of `HOLD_COLUMNS` as a `HoldInfo`."""
    return HoldInfo(
        row.id,
        row.phase,
        Amount(row.amount, row.unit),
        Amount(row.settled, row.unit) if row.settled is not None else None,
        row.idempotency_key,
        from_us(row.created_us),
        row.session,
        row.identity,
        row.tool,
        row.balance_key,
        row.server,
        row.resource,
        row.priced_by,
    )


def _insert_charges(
    conn: Connection, hold_id: int, charges: Sequence[tuple[Budget, int]], now: int, *, held: bool
) -> None:
    """What the hold counts against each budget, in the budget's unit: held while open, or spent."""
    for budget, value in charges:
        run(
            conn,
            "INSERT INTO ledger_charges (hold_id, budget, unit, held, spent, created_us)"
            " VALUES (:h, :b, :u, :held, :spent, :t)",
            {
                "h": hold_id,
                "b": budget.key,
                "u": budget.limit.unit,
                "held": value if held else 0,
                "spent": 0 if held else value,
                "t": now,
            },
        )


def _mixed(budgets: Sequence[Budget], amount: Amount) -> bool:
    """Whether a budget counts in another unit than the hold (then settling converts per charge)."""
    return any(b.limit.unit != amount.unit for b in budgets)


def _refuse(conn: Connection, hold_id: int, step: Step) -> NoReturn:
    phase = _phase_and_unit(conn, hold_id)[0]
    raise HoldStateError(f"hold {hold_id} is {phase}: it cannot become {step.end}")


def _unit_if_allowed(conn: Connection, hold_id: int, step: Step) -> tuple[str, int]:
    """The hold's unit and reserved amount, when its phase allows `step` (then only `actual`'s unit was
    another); else raise why the step cannot be taken."""
    phase, unit, reserved = _phase_and_unit(conn, hold_id)
    if phase not in step.start:
        raise HoldStateError(f"hold {hold_id} is {phase}: it cannot become {step.end}")
    return unit, reserved


def _phase_and_unit(conn: Connection, hold_id: int) -> tuple[str, str, int]:
    row = run(conn, "SELECT phase, unit, amount FROM ledger_holds WHERE id = :h", {"h": hold_id}).first()
    if row is None:
        raise HoldStateError(f"hold {hold_id} does not exist")
    return str(row.phase), str(row.unit), int(row.amount)
