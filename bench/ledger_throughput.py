"""Ledger throughput: how many paid calls a second can the ledger book, and does a decision slow down as it grows?

Everything goes through the methods the guard calls (`Ledger.reserve`, `settle`, `void`), each one a
committed, durable transaction: on SQLite a temp file with the ledger's own WAL + synchronous=FULL, on
PostgreSQL (`--postgres URL`, skipped with a note if not given) whatever fsync the server has (scripts/postgres
starts one with fsync on). Run on both when a URL is given, one after the other.

1. THROUGHPUT: N sequential pairs (default 2000, `--pairs`), after 50 unmeasured ones, of

       hold = ledger.reserve([budget], Amount(1, "sat")); ledger.settle(hold, Amount(1, "sat"))

   against one per-session budget with a limit that is never reached (its session window sums every row the
   run added, up to N + 50). Pairs per second = N / wall time of the N pairs; every reserve (the "decision")
   and every settle is also timed on its own with `time.perf_counter_ns`.

2. SCALING: two ledgers, one with 1k rows and one with `--rows` (default 1M) rows in holds + charges + rate
   events + call events, filled with set-based SQL in one transaction (SQLite: `WITH RECURSIVE`; PostgreSQL:
   `generate_series`) in the ledger's own schema. Background: calls spread evenly over the last 30 days,
   over 1000 sessions and 50 identities, each one hold (90% settled, 10% voided, half with an idempotency
   key), 3 charges (`budget:per-session@session:s<i>`, `budget:per-day@identity:u<i>`,
   `budget:per-day@global`), a rate event and a call event. One target session also made 100 calls in the
   last 90 minutes, each charging the four measured budgets:

   (a) `budget:per-session@session:bench-target`, window session: its ~100 rows;
   (b) `budget:per-hour@identity:bench-target`, window sliding 1h: ~2/3 of them;
   (c) `budget:per-day@identity:bench-target`, window calendar day (UTC): those since midnight;
   (d) `budget:per-day@global`, window calendar day: charged by every background call too, so its window holds
       ~1/30 of the background and grows with the ledger by design. Shown for information; no goal.

   The 1k and the big ledger are open side by side and measured INTERLEAVED (`--reps`, default 200, pairs of
   `reserve([budget], 1 sat)` + `void(hold)` per case and ledger, which one goes first swapped every rep, after
   20 unmeasured ones), so machine noise hits both. Reported: medians of reserve alone and of reserve + void,
   their big / 1k ratio (the goal's figure), and the median of the per-rep big / 1k ratios of samples taken
   back to back (less moved by drifts in machine load). After the fill SQLite gets `PRAGMA
   wal_checkpoint(TRUNCATE)` and no ANALYZE (the ledger never runs it); PostgreSQL gets `VACUUM ANALYZE` per
   table (what autovacuum does to a ledger that grew slowly). Each ledger is then opened fresh (`Ledger.open`,
   recovery included, timed).

On PostgreSQL every ledger lives in its own scratch schema (`CREATE SCHEMA ledger_bench_...`, selected with
search_path, dropped at the end): nothing else in the database is read or written.

Also printed with the throughput: this process's CPU time per pair (`time.process_time`; a PostgreSQL server's
own CPU is not in it), the load average, and the fsync floor of the temp directory's disk just before and just
after (median of 200 4 KiB write + fsync: one durable commit cannot be faster; on a shared VM it moves a lot).
With `--explain`, the plan of the budget check's SUM query (`Ledger._sums`) for each case on the big ledger:
EXPLAIN QUERY PLAN (SQLite), EXPLAIN (ANALYZE, BUFFERS) (PostgreSQL).

Run from the repository root:

    .venv/bin/python bench/ledger_throughput.py                              # SQLite only
    .venv/bin/python bench/ledger_throughput.py --postgres "$(cat /tmp/pgurl)" --explain
    .venv/bin/python bench/ledger_throughput.py --pairs 500 --rows 100000    # quicker
    .venv/bin/python bench/ledger_throughput.py --json                       # machine-readable

Goals: >= 1,000 reserve+settle pairs/s on SQLite; reserve + void median at 1M rows / at 1k rows <= 1.2 for
cases (a), (b), (c).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from ledgers import Amount, Budget, Ledger, Window

GOAL_PAIRS_PER_S = 1000
GOAL_RATIO = 1.2
SMALL_ROWS = 1000
WARMUP_PAIRS = 50
WARMUP_REPS = 20
DAYS = 30
SESSIONS = 1000
IDENTITIES = 50
OWN_CALLS = 100
OWN_SPAN_S = 90 * 60
US = 1_000_000
ONE = Amount(1, "sat")
HUGE = Amount(10**15, "sat")

# The budget check's query, as `Ledger._sums` runs it.
SUMS_SQL = (
    "SELECT COALESCE(SUM(held), 0), COALESCE(SUM(spent), 0) FROM ledger_charges WHERE budget = :b AND created_us >= :s"
)


@dataclass(frozen=True)
class Case:
    label: str
    budget: Budget
    goal: bool


TARGET = "bench-target"
CASES = [
    Case("(a) session", Budget("per-session", HUGE, f"session:{TARGET}", Window.session()), True),
    Case("(b) sliding 1h", Budget("per-hour", HUGE, f"identity:{TARGET}", Window.sliding("1h")), True),
    Case("(c) calendar day", Budget("per-day", HUGE, f"identity:{TARGET}", Window.calendar("day")), True),
    Case("(d) shared day*", Budget("per-day", HUGE, "global", Window.calendar("day")), False),
]


# Stores: where a fresh, empty ledger lives.


class SQLiteStore:
    name = "sqlite"

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ledger-bench-")
        self.directory = Path(self._dir.name)

    def url(self, tag: str) -> str:
        return f"sqlite:///{self.directory / (tag + '.db')}"

    def engine(self, url: str) -> Engine:
        # Our own transaction control, as the ledger does: pysqlite's would not wrap WITH ... INSERT.
        engine = create_engine(url, connect_args={"isolation_level": None})
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL), files in {self.directory}"

    def cleanup(self) -> None:
        self._dir.cleanup()


class PostgresStore:
    name = "postgres"

    def __init__(self, base_url: str) -> None:
        self._base = make_url(base_url)
        self._admin = create_engine(self._base)
        self._schemas: list[str] = []
        with self._admin.connect() as conn:
            self.server = str(conn.execute(text("SHOW server_version")).scalar())
            self.fsync = str(conn.execute(text("SHOW fsync")).scalar())
            self.sync_commit = str(conn.execute(text("SHOW synchronous_commit")).scalar())

    def url(self, tag: str) -> str:
        schema = f"ledger_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}_{tag}"
        with self._admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        self._schemas.append(schema)
        url = self._base.update_query_dict({"options": f"-c search_path={schema}"})
        return url.render_as_string(hide_password=False)

    def engine(self, url: str) -> Engine:
        return create_engine(url)

    def describe(self) -> str:
        where = self._base.set(password=None).render_as_string(hide_password=True)
        return (
            f"PostgreSQL {self.server} at {where} (fsync={self.fsync}, synchronous_commit={self.sync_commit}), "
            "one scratch schema per ledger"
        )

    def cleanup(self) -> None:
        with self._admin.begin() as conn:
            for schema in self._schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        self._admin.dispose()


Store = SQLiteStore | PostgresStore
Progress = Callable[[str], None]


# Timing helpers.


def _ms(ns: float) -> float:
    return ns / 1e6


def _stats(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(_ms(s) for s in samples_ns)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": statistics.quantiles(ms, n=10, method="inclusive")[8],
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
    }


def fsync_floor(directory: Path, samples: int = 200) -> float:
    """Median ms of one 4 KiB write + fsync in `directory` (what one durable commit cannot beat)."""
    path = directory / "fsync-probe"
    block = os.urandom(4096)
    times: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(samples):
            start = time.perf_counter_ns()
            os.pwrite(fd, block, (i % 16) * 4096)
            os.fsync(fd)
            times.append(time.perf_counter_ns() - start)
    finally:
        os.close(fd)
        path.unlink()
    return _ms(statistics.median(times))


# 1. Throughput.


def _loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def throughput(store: Store, pairs: int, probe_dir: Path) -> dict[str, Any]:
    url = store.url("throughput")
    loadavg = _loadavg()
    fsync_before = fsync_floor(probe_dir)
    budget = Budget("per-session", HUGE, "session:throughput", Window.session())
    reserve_ns: list[int] = []
    settle_ns: list[int] = []
    with Ledger.open(url) as ledger:
        for _ in range(WARMUP_PAIRS):
            ledger.settle(ledger.reserve([budget], ONE), ONE)
        clock = time.perf_counter_ns
        cpu_begin = time.process_time()
        begin = clock()
        for _ in range(pairs):
            a = clock()
            hold = ledger.reserve([budget], ONE)
            b = clock()
            ledger.settle(hold, ONE)
            c = clock()
            reserve_ns.append(b - a)
            settle_ns.append(c - b)
        elapsed_ns = clock() - begin
        cpu_s = time.process_time() - cpu_begin
        used = ledger.usage(budget)
    if used.spent != pairs + WARMUP_PAIRS or used.held != 0:
        raise RuntimeError(f"ledger disagrees with the run: {used}")
    return {
        "pairs": pairs,
        "warmup": WARMUP_PAIRS,
        "seconds": elapsed_ns / 1e9,
        "pairs_per_s": pairs / (elapsed_ns / 1e9),
        "reserve": _stats(reserve_ns),
        "settle": _stats(settle_ns),
        # The budget's session window holds every pair so far: does the decision slow down as it fills?
        "reserve_median_ms_first_last_tenth": [
            _ms(statistics.median(reserve_ns[: max(1, pairs // 10)])),
            _ms(statistics.median(reserve_ns[-max(1, pairs // 10) :])),
        ],
        "cpu_ms_per_pair": cpu_s * 1000 / pairs,
        "fsync_floor_ms": {"before": fsync_before, "after": fsync_floor(probe_dir)},
        "loadavg": loadavg,
    }


# 2. Scaling: filling a ledger fast, in its real schema.


@dataclass(frozen=True)
class Calls:
    """A run of `count` calls, call j at t0 + j * step, as set-based SQL over j (0 <= j < count)."""

    count: int
    t0_us: int
    step_us: int
    session: str  # SQL expression of j
    identity: str  # SQL expression of j
    budgets: list[str]  # SQL expressions of j: the budget keys each call charges
    key_prefix: str


def _int(name: str) -> str:
    # Explicit types: PostgreSQL would otherwise type small ints as int4 and overflow j * step.
    return f"CAST(:{name} AS BIGINT)"


def _source(dialect: str) -> tuple[str, str]:
    """(WITH clause, FROM item) yielding j = 0 .. :count - 1."""
    if dialect == "sqlite":
        return "WITH RECURSIVE n(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM n WHERE j + 1 < :count) ", "n"
    return "", f"generate_series(CAST(0 AS BIGINT), {_int('count')} - 1) AS n(j)"


def _insert_calls(conn: Connection, dialect: str, calls: Calls) -> int:
    """Insert the calls' holds, charges, rate events and call events exactly as the ledger (and the guard's
    audit trail) would have written them; return how many rows that is."""
    if calls.count <= 0:
        return 0
    base = int(conn.execute(text("SELECT COALESCE(MAX(id), 0) + 1 FROM ledger_holds")).scalar_one())
    with_, src = _source(dialect)
    at = f"{_int('t0')} + j * {_int('step')}"
    hold = f"{_int('base')} + j"
    voided = "j % 10 = 9"
    amount = "(1 + j % 50)"
    digest = "lower(hex(randomblob(32)))" if dialect == "sqlite" else "md5(CAST(j AS TEXT)) || md5(CAST(j + 1 AS TEXT))"
    budget = " ".join(f"WHEN {i} THEN {b}" for i, b in enumerate(calls.budgets))
    fanout = " UNION ALL ".join(f"SELECT {i} AS c" for i in range(len(calls.budgets)))
    params = {"count": calls.count, "t0": calls.t0_us, "step": calls.step_us, "base": base}
    statements = [
        f"INSERT INTO ledger_holds (id, idempotency_key, phase, unit, amount, settled, owner, session, identity,"
        f" tool, created_us, updated_us)"
        f" SELECT {hold}, CASE WHEN j % 2 = 0 THEN '{calls.key_prefix}' || CAST(j AS TEXT) END,"
        f" CASE WHEN {voided} THEN 'voided' ELSE 'settled' END, 'sat', {amount},"
        f" CASE WHEN {voided} THEN NULL ELSE {amount} END, 'bench-history', {calls.session}, {calls.identity},"
        f" 'fetch', {at}, {at} + {US} FROM {src}",
        f"INSERT INTO ledger_charges (hold_id, budget, unit, held, spent, created_us)"
        f" SELECT {hold}, CASE k.c {budget} END, 'sat', 0, CASE WHEN {voided} THEN 0 ELSE {amount} END, {at}"
        f" FROM {src} CROSS JOIN ({fanout}) AS k ORDER BY j, k.c",
        f"INSERT INTO ledger_rate_events (key, at_us) SELECT 'tool:fetch@session:' || {calls.session}, {at} FROM {src}",
        f"INSERT INTO ledger_call_events (at_us, session, identity, tool, decision, rule, reason, price, price_unit,"
        f" hold_id, spent, spent_unit, latency_us, args_digest)"
        f" SELECT {at} + {US}, {calls.session}, {calls.identity}, 'fetch', 'allow', NULL, NULL, {amount}, 'sat',"
        f" {hold}, CASE WHEN {voided} THEN 0 ELSE {amount} END, 'sat', 200000 + j % 100000, {digest}"
        f" FROM {src}",
    ]
    for sql in statements:
        conn.execute(text(with_ + sql), params)
    if dialect == "postgresql":
        conn.execute(
            text("SELECT setval(pg_get_serial_sequence('ledger_holds', 'id'), (SELECT MAX(id) FROM ledger_holds))")
        )
    return calls.count * (3 + len(calls.budgets))


def _plan(total_rows: int, now_us: int) -> list[Calls]:
    own_rows = OWN_CALLS * (1 + 4 + 1 + 1)
    background = max(0, (total_rows - own_rows) // (1 + 3 + 1 + 1))
    span = DAYS * 86_400 * US - 10 * US
    return [
        Calls(
            count=background,
            t0_us=now_us - DAYS * 86_400 * US,
            step_us=span // max(background, 1),
            session=f"'s' || CAST(j % {SESSIONS} AS TEXT)",
            identity=f"'u' || CAST(j % {IDENTITIES} AS TEXT)",
            budgets=[
                f"'budget:per-session@session:s' || CAST(j % {SESSIONS} AS TEXT)",
                f"'budget:per-day@identity:u' || CAST(j % {IDENTITIES} AS TEXT)",
                "'budget:per-day@global'",
            ],
            key_prefix="bg-",
        ),
        Calls(
            count=OWN_CALLS,
            t0_us=now_us - OWN_SPAN_S * US,
            step_us=OWN_SPAN_S * US // OWN_CALLS,
            session=f"'{TARGET}'",
            identity=f"'{TARGET}'",
            budgets=[f"'{case.budget.key}'" for case in CASES],
            key_prefix="own-",
        ),
    ]


def fill(store: Store, url: str, total_rows: int) -> dict[str, Any]:
    """Create the ledger's schema (Ledger.open), then fill it; return row counts and timings."""
    Ledger.open(url).close()
    engine = store.engine(url)
    dialect = engine.dialect.name
    now_us = time.time_ns() // 1000
    start = time.perf_counter()
    try:
        with engine.begin() as conn:
            rows = sum(_insert_calls(conn, dialect, calls) for calls in _plan(total_rows, now_us))
        filled_s = time.perf_counter() - start
        if dialect == "sqlite":
            with closing(sqlite3.connect(str(make_url(url).database), isolation_level=None)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for table in ("ledger_holds", "ledger_charges", "ledger_rate_events", "ledger_call_events"):
                    conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
        settled_s = time.perf_counter() - start - filled_s
        with engine.connect() as conn:
            counts = {
                table: int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
                for table in ("ledger_holds", "ledger_charges", "ledger_rate_events", "ledger_call_events")
            }
    finally:
        engine.dispose()
    if sum(counts.values()) != rows:  # rowcount is no help: pysqlite reports -1 for WITH ... INSERT
        raise RuntimeError(f"inserted {rows} rows but the tables hold {counts}")
    return {"rows": rows, "tables": counts, "fill_s": filled_s, "checkpoint_or_vacuum_s": settled_s}


def _window_rows(engine: Engine, budget: Budget) -> int:
    start = budget.window.start_us(time.time_ns() // 1000)
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT COUNT(*) FROM ledger_charges WHERE budget = :b AND created_us >= :s"),
                {"b": budget.key, "s": start},
            ).scalar_one()
        )


def explain(engine: Engine, budget: Budget) -> list[str]:
    params = {"b": budget.key, "s": budget.window.start_us(time.time_ns() // 1000)}
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return [str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + SUMS_SQL), params)]
        return [str(r[0]) for r in conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + SUMS_SQL), params)]


@contextmanager
def _opened(url: str) -> Iterator[tuple[Ledger, float]]:
    start = time.perf_counter()
    ledger = Ledger.open(url)
    opened_ms = (time.perf_counter() - start) * 1000
    try:
        yield ledger, opened_ms
    finally:
        ledger.close()


def _pair(ledger: Ledger, budget: Budget) -> tuple[int, int]:
    clock = time.perf_counter_ns
    a = clock()
    hold = ledger.reserve([budget], ONE)
    b = clock()
    ledger.void(hold)
    return b - a, clock() - a


def scaling(store: Store, big_rows: int, reps: int, plans_too: bool, progress: Progress) -> dict[str, Any]:
    sizes = {"small": SMALL_ROWS, "big": big_rows}
    urls = {size: store.url(size) for size in sizes}
    filled = {}
    for size, rows in sizes.items():
        progress(f"{store.name}: filling {rows:,} rows")
        filled[size] = fill(store, urls[size], rows)
    engines = {size: store.engine(urls[size]) for size in sizes}
    try:
        window_rows = {c.label: {s: _window_rows(engines[s], c.budget) for s in sizes} for c in CASES}
        with _opened(urls["small"]) as (small, small_open_ms), _opened(urls["big"]) as (big, big_open_ms):
            ledgers = {"small": small, "big": big}
            progress(f"{store.name}: measuring {len(CASES)} cases x {reps} interleaved reps")
            samples: dict[str, dict[str, dict[str, list[int]]]] = {
                c.label: {s: {"reserve": [], "pair": []} for s in sizes} for c in CASES
            }
            for case in CASES:
                for _ in range(WARMUP_REPS):
                    for size in sizes:
                        _pair(ledgers[size], case.budget)
            for rep in range(reps):
                order = ("small", "big") if rep % 2 == 0 else ("big", "small")
                for case in CASES:
                    for size in order:
                        reserve_ns, pair_ns = _pair(ledgers[size], case.budget)
                        samples[case.label][size]["reserve"].append(reserve_ns)
                        samples[case.label][size]["pair"].append(pair_ns)
        plans = {c.label: explain(engines["big"], c.budget) for c in CASES} if plans_too else {}
    finally:
        for engine in engines.values():
            engine.dispose()
    cases = []
    for case in CASES:
        s = samples[case.label]
        result: dict[str, Any] = {
            "case": case.label,
            "budget": case.budget.key,
            "window": str(case.budget.window),
            "window_rows": window_rows[case.label],
            "goal": GOAL_RATIO if case.goal else None,
        }
        for what in ("reserve", "pair"):
            small_stats, big_stats = _stats(s["small"][what]), _stats(s["big"][what])
            ratio = big_stats["median_ms"] / small_stats["median_ms"]
            # Samples i of both ledgers were taken back to back: their ratio cancels slow drifts in machine load.
            paired = statistics.median(big / small for small, big in zip(s["small"][what], s["big"][what], strict=True))
            result[what] = {
                "small": small_stats,
                "big": big_stats,
                "ratio_of_medians": ratio,
                "median_of_paired_ratios": paired,
            }
        result["meets_goal"] = result["pair"]["ratio_of_medians"] <= GOAL_RATIO if case.goal else None
        cases.append(result)
    return {
        "reps": reps,
        "warmup": WARMUP_REPS,
        "filled": filled,
        "open_ms": {"small": small_open_ms, "big": big_open_ms},
        "cases": cases,
        "plans": plans,
    }


# Output.


def _rows(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def _table(r: dict[str, Any]) -> str:
    out = [
        f"ledger throughput: reserve + settle pairs per second, and decision latency at 1k vs {_rows(r['rows'])} rows",
        f"python {r['python']}, SQLAlchemy {r['sqlalchemy']}, os.cpu_count() = {r['cpu_count']}, "
        f"load average at start {r['loadavg']}",
    ]
    for name, b in r["backends"].items():
        out += ["", f"== {name}: {b.get('describe') or b.get('skipped')}"]
        if "skipped" in b:
            continue
        t = b["throughput"]
        res, st = t["reserve"], t["settle"]
        if name == "sqlite":
            verdict = "meets" if t["pairs_per_s"] >= GOAL_PAIRS_PER_S else "MISSES"
            goal = f"goal >= {GOAL_PAIRS_PER_S:,} pairs/s: {verdict}"
        else:
            goal = "no goal on PostgreSQL"
        out += [
            f"1. {t['pairs']} sequential reserve + settle pairs (warm-up {t['warmup']}): "
            f"{t['pairs_per_s']:,.0f} pairs/s ({goal})",
            f"   {'':10}{'median ms':>11}{'p90 ms':>10}{'mean ms':>10}{'min ms':>10}",
        ]
        for label, s in (("reserve", res), ("settle", st)):
            out.append(f"   {label:10}{s['median_ms']:11.3f}{s['p90_ms']:10.3f}{s['mean_ms']:10.3f}{s['min_ms']:10.3f}")
        fs = t["fsync_floor_ms"]
        first, last = t["reserve_median_ms_first_last_tenth"]
        out.append(
            f"   reserve median over the first / last tenth of the pairs: {first:.3f} / {last:.3f} ms (the budget's "
            f"session window grows to {t['pairs'] + t['warmup']:,} rows)"
        )
        out.append(
            f"   this process's CPU {t['cpu_ms_per_pair']:.3f} ms per pair; fsync floor (4 KiB write + fsync, median "
            f"of 200) {fs['before']:.3f} ms before, {fs['after']:.3f} ms after; load {t['loadavg']}"
        )
        sc = b["scaling"]
        f_small, f_big = sc["filled"]["small"], sc["filled"]["big"]
        out += [
            f"2. decision latency, {sc['reps']} interleaved reps per case and ledger (warm-up {sc['warmup']}):",
            f"   ledgers of {f_small['rows']:,} and {f_big['rows']:,} rows; big one filled in {f_big['fill_s']:.1f} s "
            f"(+ {f_big['checkpoint_or_vacuum_s']:.1f} s checkpoint/vacuum); Ledger.open "
            f"{sc['open_ms']['small']:.1f} ms vs {sc['open_ms']['big']:.1f} ms",
            f"   {'case':18}{'window rows':>14}{'reserve median ms':>22}{'ratio':>7}"
            f"{'reserve+void median ms':>27}{'ratio':>7}{'paired':>8}  goal: ratio <= {GOAL_RATIO}",
            f"   {'':18}{'1k / big':>14}{'1k':>11}{'big':>11}{'':7}{'1k':>13}{'big':>14}",
        ]
        for c in sc["cases"]:
            wr = c["window_rows"]
            rs, pr = c["reserve"], c["pair"]
            verdict = "-" if c["meets_goal"] is None else "meets" if c["meets_goal"] else "MISSES"
            out.append(
                f"   {c['case']:18}{wr['small']:>7,} /{wr['big']:>6,}"
                f"{rs['small']['median_ms']:11.3f}{rs['big']['median_ms']:11.3f}{rs['ratio_of_medians']:7.2f}"
                f"{pr['small']['median_ms']:13.3f}{pr['big']['median_ms']:14.3f}{pr['ratio_of_medians']:7.2f}"
                f"{pr['median_of_paired_ratios']:8.2f}  {verdict}"
            )
        out += [
            "   ratio: big median / 1k median; paired: median over reps of big / 1k of two samples taken back to back",
            "   * (d) every background call charges it too (1/30 of them are today's): no goal, for information",
        ]
        for label, plan in sc["plans"].items():
            out.append(f"   plan of the budget SUM on the big ledger, {label}:")
            out += [f"      {line}" for line in plan]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000, help="measured reserve + settle pairs (default 2000)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the big ledger (default 1000000)")
    parser.add_argument("--reps", type=int, default=200, help="reserve + void pairs per case and ledger (default 200)")
    parser.add_argument("--postgres", metavar="URL", help="also run on PostgreSQL at this SQLAlchemy URL")
    parser.add_argument("--explain", action="store_true", help="print the plan of the budget SUM for each case")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.pairs < 2 or args.reps < 2:
        parser.error("--pairs and --reps must be at least 2")
    if args.rows <= SMALL_ROWS:
        parser.error(f"--rows must be more than {SMALL_ROWS}")

    def progress(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    sqlite_store = SQLiteStore()
    stores: list[Store] = [sqlite_store]
    backends: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {
        "rows": args.rows,
        "python": platform.python_version(),
        "sqlalchemy": version("sqlalchemy"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg": _loadavg(),
        "goal_pairs_per_s_sqlite": GOAL_PAIRS_PER_S,
        "goal_ratio": GOAL_RATIO,
        "backends": backends,
    }
    if args.postgres:
        stores.append(PostgresStore(args.postgres))
    else:
        backends["postgres"] = {"skipped": "skipped: no --postgres URL given"}
    try:
        for store in stores:
            progress(f"{store.name}: {args.pairs} reserve + settle pairs")
            backends[store.name] = {
                "describe": store.describe(),
                "throughput": throughput(store, args.pairs, sqlite_store.directory),
                "scaling": scaling(store, args.rows, args.reps, args.explain, progress),
            }
    finally:
        for store in stores:
            store.cleanup()
    if "postgres" in backends:
        backends["postgres"] = backends.pop("postgres")  # SQLite first
    print(json.dumps(result, indent=2) if args.json else _table(result))


if __name__ == "__main__":
    main()
