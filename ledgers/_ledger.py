"""`Ledger`: the one entry to the ledger, made of its parts over one store.

    part            module            what it holds
    holds           _holds.py         reserve → mark_forwarded → settle / void / mark_in_doubt → resolve;
                                      spend after the fact (charge); the state diagram (`STEPS`)
    windows         _windows.py       budgets' and rate limits' use within their windows; hit, check_rates
    observations    _observations.py  balances upstreams reported; quotes (with expiry)
    authorizations  _authorizations.py  what x402 payments signed (payer, nonce, validBefore), for the chain
    audit           _audit.py         call events
    approvals       _approvals.py     single-use approvals of one exact action
    freezes         _freezes.py       the kill switch: scopes an operator froze, audited; read at reserve
    recovery        _recovery.py      owners, heartbeat, recovery of gone processes' holds
    views           _views.py         operators' reads (usage, budget states, hold counts, report), alerts
    store           _store.py         the database, its transactions and its clock (`Store`)

Each part is a mixin of public methods that share the store (`_part.Part`); a transaction that spans
parts (a resolution and its call event) calls the other part's module function on its connection.
"""

from __future__ import annotations

import os
import uuid

from ledgers._approvals import Approvals
from ledgers._audit import Audit
from ledgers._authorizations import Authorizations
from ledgers._freezes import Freezes
from ledgers._holds import Holds
from ledgers._money import Rates
from ledgers._observations import Observations
from ledgers._recovery import DEFAULT_LEASE_S, Recovery, register, unregister
from ledgers._store import DEFAULT_POOL, Store
from ledgers._time import US_PER_S, Clock, SystemClock
from ledgers._views import Views
from ledgers._windows import Windows


class Ledger(Holds, Windows, Observations, Authorizations, Audit, Approvals, Freezes, Recovery, Views):
    """Open with `Ledger.open(url)`; SQLite (default) or PostgreSQL, the same code.

    Thread-safe: one engine, one connection per operation. Every method is synchronous; call it
    from a worker thread in async code."""

    def __init__(self, store: Store, *, owner: str, rates: Rates | None, lease_s: float) -> None:
        self._store = store
        self._rates = rates
        self.owner = owner
        self._lease_us = int(lease_s * US_PER_S)
        self._defined = set()

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        rates: Rates | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        recover: bool = True,
        read_only: bool = False,
        pool: int = DEFAULT_POOL,
    ) -> Ledger:
        """Open (creating or upgrading) the ledger at `url`: a SQLAlchemy URL, a file path, or None for
        `default_path()`. Then recover what crashed processes left open (see `ledgers._recovery`).

        `read_only`: for operators' views next to a running guard: nothing is created, upgraded,
        registered or recovered, and no write lock is ever taken (SQLite's WAL readers never block
        the writer). A ledger that does not exist yet reads as empty.

        `pool`: the most PostgreSQL connections this ledger keeps open (SQLite ignores it).

        Raises:
            SchemaError: the ledger was written by a newer release (or, read-only, by an older one).
            StorageError: the database cannot be reached or created.
        """
        clock = clock or SystemClock()
        if read_only:
            return cls(Store.open_read_only(url, clock), owner="reader", rates=rates, lease_s=lease_s)
        store = Store.open(url, clock, pool)
        ledger = cls(store, owner=uuid.uuid4().hex, rates=rates, lease_s=lease_s)
        try:
            with store.write() as conn:
                register(conn, ledger.owner, store.now_us())
            if recover:
                ledger.recover()
        except Exception:
            store.close()
            raise
        return ledger

    def close(self) -> None:
        if not self._store.read_only:
            with self._store.write() as conn:
                unregister(conn, self.owner)
        self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
