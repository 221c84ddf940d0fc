"""Where the ledger is kept: one database (a SQLite file or a PostgreSQL server), its transactions, and
the time it stores.

- A write transaction takes its locks first: SQLite's write lock (`BEGIN IMMEDIATE`, waited for when
  busy, never an error); on PostgreSQL the lock rows of the budgets and rate limits it checks, in key
  order (`SELECT ... FOR UPDATE`). So two check-and-reserve transactions on one budget never interleave.
- SQLite is opened for durability (WAL, `synchronous=FULL`); PostgreSQL through a fixed pool per ledger.
- Stored times never go backwards: the store's clock reads `max(clock, the latest time stored)`.
- Statements are our own SQL with `:name` parameters, run straight on the driver (`run`).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache, partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, CursorResult, Engine, ExceptionContext, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ledgers._errors import SchemaError, StorageError
from ledgers._schema import SCHEMA_VERSION, migrate, schema_version
from ledgers._time import Clock, to_us

# Retries of a write that SQLite reports busy despite its busy timeout (rare, but never an error).
BUSY_RETRIES = 50
# PostgreSQL connections one open ledger keeps at most (no overflow): many guards share one server,
# whose max_connections is 100 by default.
DEFAULT_POOL = 4
# How long an operation waits for one of them before it fails (the call it serves is refused).
POOL_TIMEOUT_S = 30.0
# The tables and columns of every time the ledger stores (the clock resumes from the latest).
_STORED_TIMES = (
    ("ledger_holds", "updated_us"),
    ("ledger_rate_events", "at_us"),
    ("ledger_observations", "seen_us"),
    ("ledger_call_events", "at_us"),
    ("ledger_quotes", "seen_us"),
)


def default_path() -> Path:
    """The per-user SQLite ledger: $XDG_DATA_HOME/guard/ledger.db (~/.local/share/guard/ledger.db)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "guard" / "ledger.db"


def location(url: str | os.PathLike[str] | None) -> str:
    """Where a ledger is, fit to print: its file path, or its URL with any password hidden."""
    if url is None:
        return str(default_path())
    text = str(url)
    return _safe_url(text) if "://" in text else text


class Store:
    """One ledger database: its transactions and its clock. Thread-safe: one engine, one connection per
    transaction."""

    def __init__(self, engine: Engine, clock: Clock, *, read_only: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        self.postgres = engine.dialect.name == "postgresql"
        self._clock = clock
        self._last_us = 0
        self._time_lock = threading.Lock()

    @classmethod
    def open(cls, url: str | os.PathLike[str] | None, clock: Clock, pool: int = DEFAULT_POOL) -> Store:
        """The database at `url`, created if missing and brought to this release's schema.

        Raises:
            SchemaError: it was written by a newer release.
            StorageError: it cannot be reached or created."""
        store = cls(_engine(url, pool), clock)
        try:
            with store.write() as conn:
                migrate(conn)
            with store.read() as conn:
                store._last_us = _latest_stored_us(conn)
        except Exception:
            store.close()
            raise
        return store

    @classmethod
    def open_read_only(cls, url: str | os.PathLike[str] | None, clock: Clock) -> Store:
        """The database at `url` to read only: nothing is created or upgraded, no write lock is ever
        taken (SQLite's WAL readers never block the writer). A ledger that does not exist yet reads as
        an empty one (in memory).

        Raises:
            SchemaError: its schema is not this release's (older or newer).
            StorageError: it cannot be reached."""
        engine = _empty_engine() if _sqlite_file_missing(url) else _engine(url, read_only=True)
        store = cls(engine, clock, read_only=True)
        try:
            with store.read() as conn:
                found = schema_version(conn)
                if found not in (0, SCHEMA_VERSION):
                    raise SchemaError(
                        f"the ledger's schema is version {found}, this release reads version {SCHEMA_VERSION}:"
                        + (" upgrade guard" if found > SCHEMA_VERSION else " start `guard run` once to upgrade it")
                    )
                store._last_us = _latest_stored_us(conn) if found else 0
            if found == 0:  # a database without a ledger yet: an empty one
                store.engine.dispose()
                store.engine = _empty_engine()
        except Exception:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def now_us(self) -> int:
        """The clock, never earlier than a time this store stored (or found stored) before."""
        with self._time_lock:
            self._last_us = max(to_us(self._clock.now()), self._last_us)
            return self._last_us

    @contextmanager
    def write(self, lock_keys: Sequence[str] = ()) -> Iterator[Connection]:
        """One write transaction: SQLite's write lock taken up front (`BEGIN IMMEDIATE`), PostgreSQL's
        rows of `lock_keys` locked in key order. A busy SQLite database is waited for, never reported as
        an error.

        Raises:
            StorageError: the database could not be written (nothing was)."""
        conn = self._begin_write()
        try:
            if self.postgres and lock_keys:
                _lock_rows(conn, lock_keys)
            yield conn
            conn.commit()
        except DBAPIError as exc:
            conn.rollback()
            raise StorageError(f"the ledger could not be written: {exc.orig}") from exc
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One read transaction (SQLite: a plain `BEGIN`, which takes no write lock).

        Raises:
            StorageError: the database could not be read."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(ledger_read=True)
                with conn.begin():
                    yield conn
        except DBAPIError as exc:
            raise StorageError(f"the ledger could not be read: {exc.orig}") from exc
        except PoolTimeout as exc:
            raise StorageError(f"the ledger could not be read: {_pool_busy(self.engine)}") from exc

    def savepoint(self, conn: Connection) -> AbstractContextManager[Any]:
        """Around a write a unique index may refuse: only PostgreSQL can race past the check before it
        (SQLite holds its write lock), so only it needs a savepoint to go on after the refusal."""
        return conn.begin_nested() if self.postgres else nullcontext()

    def _begin_write(self) -> Connection:
        if self.read_only:
            raise StorageError("this ledger was opened read-only")
        for attempt in range(BUSY_RETRIES):
            try:
                conn = self.engine.connect()
            except PoolTimeout as exc:
                raise StorageError(f"the ledger could not be written: {_pool_busy(self.engine)}") from exc
            try:
                conn.begin()
                return conn
            except OperationalError as exc:
                conn.close()
                if not _busy(exc) or attempt == BUSY_RETRIES - 1:
                    raise StorageError(f"the ledger could not be written: {exc.orig}") from exc
                time.sleep(0.01 * (attempt + 1))
            except DBAPIError as exc:
                conn.close()
                raise StorageError(f"the ledger could not be written: {exc.orig}") from exc
        raise AssertionError("unreachable")  # pragma: no cover


def run(conn: Connection, sql: str, params: Any = None) -> CursorResult[Any]:
    """Execute our own SQL (`:name` parameters; a list of dicts runs it once per dict) straight on the
    driver: SQLAlchemy's statement compilation costs more than SQLite takes to run these statements."""
    return conn.exec_driver_sql(_driver_sql(sql, conn.dialect.paramstyle), params if params is not None else {})


def sql_list(names: Sequence[str]) -> str:
    """Our own constant names (phases) as an SQL list: `('reserved', 'forwarded')`."""
    return "(" + ", ".join(f"'{name}'" for name in names) + ")"


def columns(names: Sequence[str], prefix: str = "") -> str:
    """A column list for SELECT or INSERT: `a, b, c` (or `:a, :b, :c` with prefix ":")."""
    return ", ".join(prefix + name for name in names)


@cache
def _driver_sql(sql: str, paramstyle: str) -> str:
    if paramstyle == "pyformat":  # psycopg
        return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql.replace("%", "%%"))
    return sql  # sqlite3 takes :name as it is


def _lock_rows(conn: Connection, keys: Sequence[str]) -> None:
    run(conn, "INSERT INTO ledger_locks (key) VALUES (:k) ON CONFLICT DO NOTHING", [{"k": k} for k in keys])
    run(conn, "SELECT key FROM ledger_locks WHERE key = ANY(:keys) ORDER BY key FOR UPDATE", {"keys": list(keys)})


def _busy(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


def _latest_stored_us(conn: Connection) -> int:
    return max(int(run(conn, f"SELECT MAX({column}) FROM {table}").scalar() or 0) for table, column in _STORED_TIMES)


def _sqlite_file_missing(url: str | os.PathLike[str] | None) -> bool:
    if url is None:
        return not default_path().exists()
    text = str(url)
    if "://" not in text:
        return not Path(text).exists()
    if text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return not Path(text[len("sqlite:///") :].split("?")[0]).exists()
    return False


def _empty_engine() -> Engine:
    """An empty ledger in memory: what a reader sees where no ledger was written yet."""
    engine = _engine("sqlite://")
    with engine.begin() as conn:
        migrate(conn)
    return engine


def _engine(url: str | os.PathLike[str] | None, pool: int = DEFAULT_POOL, *, read_only: bool = False) -> Engine:
    """`read_only`: the database itself refuses writes (SQLite opened `mode=ro`, PostgreSQL sessions with
    `default_transaction_read_only`), beside the store's own refusal to begin one."""
    if url is None:
        path = default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    elif isinstance(url, os.PathLike) or "://" not in str(url):
        url = f"sqlite:///{Path(url)}"
    url = str(url)
    try:
        if url.startswith("sqlite"):
            if read_only and url.startswith("sqlite:///") and not url.startswith("sqlite:///file:"):
                file, _, _ = url[len("sqlite:///") :].partition("?")
                url = f"sqlite:///file:{quote(file)}?mode=ro&uri=true"
            engine = create_engine(
                url,
                connect_args={"timeout": 30, "isolation_level": None, "check_same_thread": False},
                # Every transaction ends in an explicit commit or rollback: no reset needed on return.
                pool_reset_on_return=None,
            )
            event.listen(engine, "connect", _sqlite_read_pragmas if read_only else _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            if pool < 1:
                raise StorageError(f"a ledger needs a pool of at least 1 connection, not {pool}")
            connect_args = {"options": _read_only_options(url)} if read_only else {}
            engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=pool,
                max_overflow=0,
                pool_timeout=POOL_TIMEOUT_S,
                connect_args=connect_args,
            )
            event.listen(engine, "handle_error", partial(_no_free_slots, url, pool))
        with engine.connect():
            pass
    except (DBAPIError, ImportError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"cannot open the ledger at {_safe_url(url)}: {reason}") from exc
    return engine


# PostgreSQL's SQLSTATE 53300 (too_many_connections), as its message says it when connecting.
_NO_SLOTS = ("too many clients already", "remaining connection slots are reserved", "too many connections for")


def _no_free_slots(url: str, pool: int, context: ExceptionContext) -> None:
    """A server that refuses connections because all its slots are taken: say so, and what to change."""
    if any(words in str(context.original_exception) for words in _NO_SLOTS):
        raise StorageError(
            f"the PostgreSQL server of the ledger at {_safe_url(url)} has no free connection slots (its"
            f" max_connections is reached): each guard keeps up to {pool} (guard run --ledger-pool N);"
            " run fewer guards or give each fewer, or raise max_connections in postgresql.conf"
        ) from context.original_exception


def _pool_busy(engine: Engine) -> str:
    return (
        f"all {engine.pool.size()} of its connections stayed busy for {POOL_TIMEOUT_S:g} s"  # type: ignore[attr-defined]
        " (guard run --ledger-pool N allows more)"
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # FULL: NORMAL may lose a committed hold on power loss. WAL: readers never block the writer.
    for pragma in ("busy_timeout=30000", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        for attempt in range(BUSY_RETRIES):
            try:
                cursor.execute(f"PRAGMA {pragma}")
                break
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL while another process does may report busy at once,
                # without waiting on the busy timeout.
                if "locked" not in str(exc) or attempt == BUSY_RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
    cursor.close()


def _read_only_options(url: str) -> str:
    """libpq's `options` making every transaction read-only, beside those the URL already sets (a
    `search_path`, say): connect_args would replace them."""
    given = make_url(url).query.get("options", "")
    given = " ".join(given) if isinstance(given, tuple) else given
    return f"{given} -c default_transaction_read_only=on".strip()


def _sqlite_read_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # A read-only connection changes nothing: not even the journal mode (the writers set WAL).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # pysqlite's own transaction handling is off (isolation_level=None); writers take the lock up front.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("ledger_read") else "BEGIN IMMEDIATE")


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"
