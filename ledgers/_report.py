"""Spend reports: what the ledger says about one period, as plain frozen dataclasses (no formatting).

What is counted:
- spend comes from holds *created* in the period: `spent` is what the guard's own payments settled at,
  `in_doubt` the full amount of payments that may or may not have left, `external` spend seen only in
  a balance (`Ledger.charge`); `total` = spent + external. Lightning amounts are summed in msat (sat
  and msat holds add up exactly); other units are never mixed.
- denials, rate-limit hits and stale-balance denials come from the call events of the period: denials
  are counted per rule as the policy names it; rate-limit hits and stale balances are picked out by the
  kind of rule (`CallRecord.kind`) and the balance it named (`balance_key`), never by what a rule's name
  or its words say;
- budgets: what the period's holds counted against each budget, in the budget's unit, beside what they
  paid in their own unit (a usd budget counting usdc and sats shows a row for each): one row per budget,
  scope and payment unit;
- holds in doubt are every hold in doubt now, whenever it was made;
- payments above their reservation: holds created in the period and settled at more than they held
  (the spend above counts all of it);
- balance drift: for each balance of money (`BalanceObservation.money`: a wallet, a P402 session)
  observed in the period, how its first and last observation differ, against what the guard counted as
  drawn on it in between.

Each query reads only the period's rows through the index on its time column (`ledger_holds_created`,
`ledger_call_events_time`, `ledger_observations_time`, `ledger_holds_balance_time`) and aggregates in
SQL: Python only sees grouped rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection

from ledgers._money import Amount
from ledgers._schema import MAYBE_PAID
from ledgers._store import run, sql_list
from ledgers._time import US_PER_S, from_us, to_us

US_PER_HOUR = 3600 * US_PER_S
TOP = 10  # how many URLs and origins the report names, per unit
# The kinds of rule that count calls: their denials are rate-limit hits.
RATE_KINDS = ("rate_limit", "quota", "repeat_limit")


@dataclass(frozen=True)
class Spend:
    """What holds of one key (a session, a tool, an hour, a URL...) came to in one unit.

    `key` is None for the totals, and for holds that do not record that key."""

    key: str | None
    unit: str
    spent: int  # settled payments the guard made
    in_doubt: int  # payments that may or may not have left, in full
    external: int  # spend seen only in a balance
    payments: int  # holds counted: settled with a spend, in doubt, or external

    @property
    def total(self) -> int:
        """Spent, external spend included (in-doubt money is not known to be spent)."""
        return self.spent + self.external


@dataclass(frozen=True)
class BudgetCount:
    """What the period's payments in one unit (`paid_unit`, Lightning in msat) counted against one budget:
    `spent` and `in_doubt` in the budget's `unit` (converted at each reservation's rate), `paid` and
    `paid_in_doubt` in the payments' own unit."""

    budget: str
    scope: str
    unit: str
    spent: int
    in_doubt: int
    paid_unit: str
    paid: int
    paid_in_doubt: int
    payments: int


@dataclass(frozen=True)
class RuleCount:
    """Calls one rule denied, with one of the reasons given (the same rule words its reasons alike)."""

    rule: str
    count: int
    example: str | None


@dataclass(frozen=True)
class WouldDenial:
    """Calls a shadowed rule would have denied (shadow mode), forwarded all the same: how many, one reason,
    and what they paid (settled, per unit): the money that rule would have kept."""

    rule: str
    kind: str | None
    count: int
    example: str | None
    kept: tuple[Amount, ...]


@dataclass(frozen=True)
class StaleDenial:
    """Paying calls to `tool` refused because the balance they draw on was stale."""

    tool: str
    balance: str | None
    count: int


@dataclass(frozen=True)
class DoubtfulHold:
    """A hold in doubt now: its payment may or may not have left."""

    id: int
    amount: Amount
    tool: str | None
    session: str | None
    identity: str | None
    server: str | None
    resource: str | None
    created: datetime
    age_s: float
    # An x402 payment's signed authorization: when it stops being usable (`validBefore`), and whether that
    # has passed with the hold still unsettled (the transfer can no longer happen, only the chain can say
    # whether it did before: `guard holds reconcile` with `chains:`, or `guard holds resolve`).
    valid_before: datetime | None = None
    lapsed: bool = False


@dataclass(frozen=True)
class OverReservation:
    """A payment settled above what was reserved for it: the upstream paid more than the guard's price
    bound (`priced_by`: what set that bound). Amounts in the hold's unit."""

    id: int
    reserved: Amount
    paid: Amount
    tool: str | None
    session: str | None
    identity: str | None
    server: str | None
    resource: str | None
    priced_by: str | None
    created: datetime

    @property
    def excess(self) -> Amount:
        return Amount(self.paid.value - self.reserved.value, self.reserved.unit)


@dataclass(frozen=True)
class BalanceDrift:
    """A money balance's first and last observation in the period, against what the guard knows moved it
    in between: its own payments drawn on it (settled, and in doubt in full), spend it saw only in the
    balance (external), and rises between consecutive observations (top-ups). Amounts in `unit`."""

    key: str
    unit: str
    first: int
    first_seen: datetime
    last: int
    last_seen: datetime
    observations: int
    counted: int
    external: int
    topups: int
    problem: str | None = None  # why some of it could not be compared (amounts in other units)

    @property
    def fell_by(self) -> int:
        """What the upstream's balance fell by (negative: it rose)."""
        return self.first - self.last

    @property
    def unexplained(self) -> int:
        """The fall the guard cannot account for (negative: the guard counted more than the balance fell)."""
        return self.fell_by + self.topups - self.counted - self.external


@dataclass(frozen=True)
class SpendReport:
    """Spend in [start, end), as the ledger recorded it. Times are in the report's time zone (that of
    `start`), hours too: `by_hour` keys are the local hour's start, ISO 8601 (`2026-11-21T13:00+01:00`)."""

    start: datetime
    end: datetime
    timezone: str
    generated: datetime
    calls: tuple[tuple[str, int], ...]  # (decision, count): allow, deny, error, external, topup, resolve
    totals: tuple[Spend, ...]
    by_session: tuple[Spend, ...]
    by_identity: tuple[Spend, ...]
    by_server: tuple[Spend, ...]
    by_tool: tuple[Spend, ...]
    by_hour: tuple[Spend, ...]
    top_urls: tuple[Spend, ...]
    top_origins: tuple[Spend, ...]
    budgets: tuple[BudgetCount, ...]
    denials: tuple[RuleCount, ...]
    would_denials: tuple[WouldDenial, ...]
    rate_limit_hits: tuple[RuleCount, ...]
    stale_denials: tuple[StaleDenial, ...]
    in_doubt: tuple[DoubtfulHold, ...]
    over_reservations: tuple[OverReservation, ...]
    drift: tuple[BalanceDrift, ...]

    @property
    def nothing_spent(self) -> bool:
        """No payment settled, none in doubt, no external spend in the period."""
        return not any(t.spent or t.in_doubt or t.external for t in self.totals)

    def hours(self) -> list[str]:
        """Every local hour the period touches, labelled as `by_hour` labels them (a chart's x axis)."""
        assert self.start.tzinfo is not None
        shift = _shift(self.start)
        first = (to_us(self.start) + shift) // US_PER_HOUR
        last = (to_us(self.end) - 1 + shift) // US_PER_HOUR
        return [_hour_label(bucket, shift, self.start.tzinfo) for bucket in range(first, last + 1)]


def build_report(conn: Connection, start: datetime, end: datetime, now_us: int) -> SpendReport:
    """The report of [start, end) read on `conn` (one read transaction); `now_us` is the ledger's clock.
    The time zone of `start` is the report's: hours are that zone's hours."""
    zone = start.tzinfo
    if zone is None or end.tzinfo is None:
        raise ValueError("a report's period needs timezone-aware times")
    period = {"start": to_us(start), "end": to_us(end)}
    spend = _spend(conn, period, _shift(start), zone)
    calls, denials = _calls(conn, period)
    return SpendReport(
        start=start,
        end=end.astimezone(zone),
        timezone=getattr(zone, "key", None) or str(zone),
        generated=from_us(now_us).astimezone(zone),
        calls=calls,
        totals=spend["total"],
        by_session=spend["session"],
        by_identity=spend["identity"],
        by_server=spend["server"],
        by_tool=spend["tool"],
        by_hour=spend["hour"],
        top_urls=_top(spend["resource"]),
        top_origins=_top(_by_origin(spend["resource"])),
        budgets=_budgets(conn, period),
        denials=denials,
        would_denials=_would_denials(conn, period),
        rate_limit_hits=_rate_limit_hits(conn, period),
        stale_denials=_stale_denials(conn, period),
        in_doubt=_in_doubt(conn, now_us, zone),
        over_reservations=_over_reservations(conn, period, zone),
        drift=_drift(conn, period, zone),
    )


# `_lightning` in SQL: for sums and comparisons made by the database.
def lightning_unit(column: str) -> str:
    return f"CASE WHEN {column} = 'sat' THEN 'msat' ELSE {column} END"


def in_msat(value: str, unit_column: str) -> str:
    return f"({value}) * CASE WHEN {unit_column} = 'sat' THEN 1000 ELSE 1 END"


# Three GROUP BYs over the period's holds (found through `ledger_holds_created`): who paid (session,
# identity, server and tool together: a session has one identity and server, and few tools, so few
# groups), what for, and when. The breakdowns and totals are sums of those groups, made here; so are the
# sums by phase, folded into spent / in doubt / external.
_GROUPINGS = {  # name: (selected, grouped by)
    "who": ("session, identity, server, tool", "session, identity, server, tool"),
    "resource": ("resource", "resource"),
    "hour": (f"(created_us + :shift) / {US_PER_HOUR} AS hour", "hour"),
}
_SPEND_SQL = """
SELECT {keys}, unit, phase, external, SUM(settled) AS settled, SUM(amount) AS amount, COUNT(*) AS n
FROM ledger_holds
WHERE created_us >= :start AND created_us < :end AND (settled > 0 OR phase = 'in_doubt')
GROUP BY {by}, unit, phase, external
"""


def _spend(conn: Connection, period: dict[str, int], shift: int, zone: tzinfo) -> dict[str, tuple[Spend, ...]]:
    params = {**period, "shift": shift}
    grouped = {
        name: _rows(conn, _SPEND_SQL.format(keys=keys, by=by), params) for name, (keys, by) in _GROUPINGS.items()
    }
    who = grouped["who"]
    # In time order (a repeated hour at a DST change: by UTC), whatever the labels say.
    hours = [(_hour_label(int(row.hour), shift, zone), row) for row in grouped["hour"]]
    return {
        "total": _folded([(None, row) for row in who]),
        **{
            key: _folded([(getattr(row, key), row) for row in who]) for key in ("session", "identity", "server", "tool")
        },
        "resource": _folded([(row.resource, row) for row in grouped["resource"]]),
        "hour": _folded(hours, order=lambda s: (datetime.fromisoformat(s.key or ""), s.unit)),
    }


def _folded(rows: Iterable[tuple[str | None, Any]], order: Callable[[Spend], Any] | None = None) -> tuple[Spend, ...]:
    """Sums by key and unit of grouped rows (unit, phase, external, settled, amount, n), ordered by key
    (unknown last) then unit unless `order` says otherwise."""
    sums: dict[tuple[str | None, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for key, row in rows:
        if row.phase == "in_doubt":
            amount, at = _lightning(int(row.amount), row.unit), 1
        else:
            amount, at = _lightning(int(row.settled), row.unit), 2 if row.external else 0
        into = sums[(key, amount.unit)]
        into[at] += amount.value
        into[3] += int(row.n)
    return tuple(sorted((Spend(key, unit, *values) for (key, unit), values in sums.items()), key=order or _by_key))


def _shift(start: datetime) -> int:
    """How far local hours start from UTC hours, in µs (30 minutes in India, none in most zones)."""
    offset = start.utcoffset()
    return int(offset.total_seconds() * US_PER_S) % US_PER_HOUR if offset is not None else 0


def _by_key(spend: Spend) -> tuple[bool, str, str]:
    return spend.key is None, spend.key or "", spend.unit


def _hour_label(bucket: int, shift: int, zone: tzinfo) -> str:
    return from_us(bucket * US_PER_HOUR - shift).astimezone(zone).isoformat(timespec="minutes")


def _top(rows: Iterable[Spend]) -> tuple[Spend, ...]:
    """The TOP keys of each unit by spend (then in doubt, payments, key), keys unknown left out."""
    by_unit: dict[str, list[Spend]] = defaultdict(list)
    for row in rows:
        if row.key is not None:
            by_unit[row.unit].append(row)
    ranked = []
    for unit in sorted(by_unit):
        ranked += sorted(by_unit[unit], key=lambda s: (-s.total, -s.in_doubt, -s.payments, s.key or ""))[:TOP]
    return tuple(ranked)


def _by_origin(resources: Iterable[Spend]) -> list[Spend]:
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row in resources:
        if row.key is None:
            continue
        into = sums[(origin(row.key), row.unit)]
        for i, value in enumerate((row.spent, row.in_doubt, row.external, row.payments)):
            into[i] += value
    return [Spend(key, unit, *values) for (key, unit), values in sums.items()]


def origin(url: str) -> str:
    """scheme://host[:port] of a URL (the URL itself when it has none)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


# The period's holds (through `ledger_holds_created`) joined to their charges, by budget and payment unit.
_BUDGETS_SQL = f"""
SELECT COALESCE(b.name, c.budget) AS name, COALESCE(b.scope, '') AS scope, c.unit AS unit,
       {lightning_unit("h.unit")} AS paid_unit,
       SUM(CASE WHEN h.phase = 'in_doubt' THEN 0 ELSE c.spent END) AS spent,
       SUM(CASE WHEN h.phase = 'in_doubt' THEN c.held ELSE 0 END) AS in_doubt,
       SUM(CASE WHEN h.phase = 'in_doubt' THEN 0 ELSE {in_msat("h.settled", "h.unit")} END) AS paid,
       SUM(CASE WHEN h.phase = 'in_doubt' THEN {in_msat("h.amount", "h.unit")} ELSE 0 END) AS paid_in_doubt,
       COUNT(*) AS n
FROM ledger_holds h JOIN ledger_charges c ON c.hold_id = h.id LEFT JOIN ledger_budgets b ON b.key = c.budget
WHERE h.created_us >= :start AND h.created_us < :end AND (h.settled > 0 OR h.phase = 'in_doubt')
GROUP BY COALESCE(b.name, c.budget), COALESCE(b.scope, ''), c.unit, {lightning_unit("h.unit")}
ORDER BY name, scope, paid_unit
"""


def _budgets(conn: Connection, period: dict[str, int]) -> tuple[BudgetCount, ...]:
    return tuple(
        BudgetCount(
            row.name,
            row.scope,
            row.unit,
            int(row.spent),
            int(row.in_doubt),
            row.paid_unit,
            int(row.paid),
            int(row.paid_in_doubt),
            int(row.n),
        )
        for row in _rows(conn, _BUDGETS_SQL, period)
    )


_CALLS_SQL = """
SELECT decision, rule, COUNT(*) AS n, MIN(reason) AS example FROM ledger_call_events
WHERE at_us >= :start AND at_us < :end GROUP BY decision, rule
"""


def _calls(conn: Connection, period: dict[str, int]) -> tuple[tuple[tuple[str, int], ...], tuple[RuleCount, ...]]:
    decisions: dict[str, int] = defaultdict(int)
    denials = []
    for decision, rule, count, example in _rows(conn, _CALLS_SQL, period):
        decisions[decision] += int(count)
        if decision == "deny":
            denials.append(RuleCount(rule or "(none)", int(count), example))
    denials.sort(key=lambda d: (-d.count, d.rule))
    return tuple(sorted(decisions.items())), tuple(denials)


_WOULD_DENY_SQL = """
SELECT rule, kind, spent_unit, COUNT(*) AS n, SUM(spent) AS paid, MIN(reason) AS example FROM ledger_call_events
WHERE at_us >= :start AND at_us < :end AND decision = 'would_deny' GROUP BY rule, kind, spent_unit
"""


def _would_denials(conn: Connection, period: dict[str, int]) -> tuple[WouldDenial, ...]:
    """The would-denials of shadow mode by rule, with what their calls paid, per unit."""
    found: dict[tuple[str, str | None], tuple[int, str | None, list[Amount]]] = {}
    for rule, kind, unit, count, paid, example in _rows(conn, _WOULD_DENY_SQL, period):
        n, first, kept = found.get((rule or "(none)", kind), (0, None, []))
        if unit is not None and paid:
            kept = [*kept, Amount(int(paid), unit)]
        found[(rule or "(none)", kind)] = (n + int(count), first or example, kept)
    rows = [
        WouldDenial(rule, kind, n, example, tuple(sorted(kept, key=lambda a: a.unit)))
        for (rule, kind), (n, example, kept) in found.items()
    ]
    return tuple(sorted(rows, key=lambda d: (-d.count, d.rule)))


_RATE_LIMIT_SQL = f"""
SELECT rule, COUNT(*) AS n, MIN(reason) AS example FROM ledger_call_events
WHERE at_us >= :start AND at_us < :end AND decision = 'deny' AND kind IN {sql_list(RATE_KINDS)}
GROUP BY rule
"""


def _rate_limit_hits(conn: Connection, period: dict[str, int]) -> tuple[RuleCount, ...]:
    hits = [
        RuleCount(rule or "(none)", int(count), example)
        for rule, count, example in _rows(conn, _RATE_LIMIT_SQL, period)
    ]
    return tuple(sorted(hits, key=lambda d: (-d.count, d.rule)))


_STALE_SQL = """
SELECT tool, balance_key, COUNT(*) AS n FROM ledger_call_events
WHERE at_us >= :start AND at_us < :end AND decision = 'deny' AND kind = 'stale_balance'
GROUP BY tool, balance_key
"""


def _stale_denials(conn: Connection, period: dict[str, int]) -> tuple[StaleDenial, ...]:
    rows = _rows(conn, _STALE_SQL, period)
    ordered = sorted(rows, key=lambda row: (-row.n, row.tool, row.balance_key or ""))
    return tuple(StaleDenial(row.tool, row.balance_key, int(row.n)) for row in ordered)


_IN_DOUBT_SQL = """
SELECT h.id, h.unit, h.amount, h.tool, h.session, h.identity, h.server, h.resource, h.created_us,
       a.valid_before_us
FROM ledger_holds h LEFT JOIN ledger_authorizations a ON a.nonce = h.idempotency_key
WHERE h.phase = 'in_doubt' ORDER BY h.created_us, h.id
"""


def _in_doubt(conn: Connection, now_us: int, zone: tzinfo) -> tuple[DoubtfulHold, ...]:
    return tuple(
        DoubtfulHold(
            id=int(row.id),
            amount=_lightning(int(row.amount), row.unit),
            tool=row.tool,
            session=row.session,
            identity=row.identity,
            server=row.server,
            resource=row.resource,
            created=from_us(row.created_us).astimezone(zone),
            age_s=max(0, now_us - row.created_us) / US_PER_S,
            valid_before=from_us(row.valid_before_us).astimezone(zone) if row.valid_before_us is not None else None,
            lapsed=row.valid_before_us is not None and row.valid_before_us <= now_us,
        )
        for row in _rows(conn, _IN_DOUBT_SQL)
    )


_OVER_SQL = """
SELECT id, unit, amount, settled, tool, session, identity, server, resource, priced_by, created_us
FROM ledger_holds
WHERE created_us >= :start AND created_us < :end AND phase = 'settled' AND settled > amount
ORDER BY created_us, id
"""


def _over_reservations(conn: Connection, period: dict[str, int], zone: tzinfo) -> tuple[OverReservation, ...]:
    return tuple(
        OverReservation(
            id=int(row.id),
            reserved=Amount(int(row.amount), row.unit),
            paid=Amount(int(row.settled), row.unit),
            tool=row.tool,
            session=row.session,
            identity=row.identity,
            server=row.server,
            resource=row.resource,
            priced_by=row.priced_by,
            created=from_us(row.created_us).astimezone(zone),
        )
        for row in _rows(conn, _OVER_SQL, period)
    )


def _lightning(value: int, unit: str) -> Amount:
    """An amount as reports count it: Lightning in msat (so sat and msat add up), other units as they are."""
    return Amount(value * 1000, "msat") if unit == "sat" else Amount(value, unit)


# Per money balance observed in the period: first and last observation, how many, and what it rose by
# between consecutive observations in one unit (LAG over the key's observations, in time order).
_DRIFT_SQL = f"""
WITH o AS (
  SELECT key, {lightning_unit("unit")} AS u, {in_msat("amount", "unit")} AS a, seen_us,
         LAG({in_msat("amount", "unit")}) OVER (PARTITION BY key ORDER BY seen_us, id) AS prev_a,
         LAG({lightning_unit("unit")}) OVER (PARTITION BY key ORDER BY seen_us, id) AS prev_u,
         ROW_NUMBER() OVER (PARTITION BY key ORDER BY seen_us, id) AS nth,
         ROW_NUMBER() OVER (PARTITION BY key ORDER BY seen_us DESC, id DESC) AS nth_last
  FROM ledger_observations
  WHERE seen_us >= :start AND seen_us < :end AND amount IS NOT NULL AND money
)
SELECT key,
       MAX(CASE WHEN nth = 1 THEN u END) AS first_u, MAX(CASE WHEN nth = 1 THEN a END) AS first_a,
       MAX(CASE WHEN nth = 1 THEN seen_us END) AS first_seen,
       MAX(CASE WHEN nth_last = 1 THEN u END) AS last_u, MAX(CASE WHEN nth_last = 1 THEN a END) AS last_a,
       MAX(CASE WHEN nth_last = 1 THEN seen_us END) AS last_seen,
       COUNT(*) AS n,
       SUM(CASE WHEN u = prev_u AND a > prev_a THEN a - prev_a ELSE 0 END) AS rises
FROM o GROUP BY key ORDER BY key
"""

# What the guard counted against one balance between two observations: its payments (settled, and in
# doubt in full, as `Ledger.spent_from` counts them) and spend seen only in the balance.
_DRAWN_SQL = f"""
SELECT {lightning_unit("unit")} AS u,
       SUM(CASE WHEN external THEN 0 WHEN phase = 'settled' THEN {in_msat("settled", "unit")}
                ELSE {in_msat("amount", "unit")} END) AS counted,
       SUM(CASE WHEN external THEN {in_msat("settled", "unit")} ELSE 0 END) AS external
FROM ledger_holds
WHERE balance_key = :key AND updated_us > :first AND updated_us <= :last AND phase IN {sql_list(MAYBE_PAID)}
GROUP BY {lightning_unit("unit")}
"""


def _drift(conn: Connection, period: dict[str, int], zone: tzinfo) -> tuple[BalanceDrift, ...]:
    drifts = []
    for row in _rows(conn, _DRIFT_SQL, period):
        unit = row.first_u
        problems = []
        if row.last_u != unit:
            problems.append(f"observed in {unit} and in {row.last_u}")
        counted = external = 0
        drawn = _rows(conn, _DRAWN_SQL, {"key": row.key, "first": row.first_seen, "last": row.last_seen})
        for u, paid, seen_only in drawn:
            if u != unit:
                problems.append(f"payments in {u} drew on it too")
                continue
            counted, external = int(paid or 0), int(seen_only or 0)
        drifts.append(
            BalanceDrift(
                key=row.key,
                unit=unit,
                first=int(row.first_a),
                first_seen=from_us(row.first_seen).astimezone(zone),
                last=int(row.last_a) if row.last_u == unit else int(row.first_a),
                last_seen=from_us(row.last_seen).astimezone(zone),
                observations=int(row.n),
                counted=counted,
                external=external,
                topups=int(row.rises or 0),
                problem="; ".join(problems) + ": not compared" if problems else None,
            )
        )
    return tuple(drifts)


def _rows(conn: Connection, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
    return list(run(conn, statement, params).all())


__all__ = [
    "BalanceDrift",
    "BudgetCount",
    "DoubtfulHold",
    "OverReservation",
    "RuleCount",
    "Spend",
    "SpendReport",
    "StaleDenial",
    "WouldDenial",
    "build_report",
    "origin",
]
