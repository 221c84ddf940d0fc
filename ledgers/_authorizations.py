"""x402 transfer authorizations: what a payment signed (payer, nonce, value, validBefore), kept by its nonce
so a hold in doubt can be reconciled with the chain (`guard.payments.chains`), and told apart once its
authorization has lapsed."""

from __future__ import annotations

from typing import Any

from ledgers._errors import AmountError
from ledgers._holds import HOLD_COLUMNS, hold_info
from ledgers._money import Amount
from ledgers._part import Part
from ledgers._records import Authorization, HoldInfo
from ledgers._store import columns, run
from ledgers._time import from_us, to_us

AUTHORIZATION_COLUMNS = ("nonce", "network", "asset", "payer", "value", "unit", "valid_before_us")


class Authorizations(Part):
    def remember_authorization(self, authorization: Authorization) -> None:
        """Keep what an x402 payment signed. The first seen for a nonce stays (the chain uses a nonce once)."""
        if not isinstance(authorization.value, Amount):
            raise AmountError(f"an authorization's value must be an Amount, not {authorization.value!r}")
        values = {
            "nonce": authorization.nonce,
            "network": authorization.network,
            "asset": authorization.asset,
            "payer": authorization.payer,
            "value": authorization.value.value,
            "unit": authorization.value.unit,
            "valid_before_us": to_us(authorization.valid_before),
        }
        with self._store.write() as conn:
            run(
                conn,
                f"INSERT INTO ledger_authorizations ({columns(AUTHORIZATION_COLUMNS)}, seen_us)"
                f" VALUES ({columns(AUTHORIZATION_COLUMNS, ':')}, :seen_us) ON CONFLICT (nonce) DO NOTHING",
                values | {"seen_us": self._store.now_us()},
            )

    def authorization(self, nonce: str) -> Authorization | None:
        """What the payment keyed `nonce` signed, if an x402 payment carried it."""
        with self._store.read() as conn:
            row = run(
                conn,
                f"SELECT {columns(AUTHORIZATION_COLUMNS)} FROM ledger_authorizations WHERE nonce = :n",
                {"n": nonce},
            ).first()
        return _authorization(row) if row is not None else None

    def authorized_in_doubt(self) -> list[tuple[HoldInfo, Authorization]]:
        """Holds in doubt whose payment carried a transfer authorization, with it, oldest first."""
        with self._store.read() as conn:
            rows = run(
                conn,
                f"SELECT {columns(HOLD_COLUMNS, 'h.')}, {columns(AUTHORIZATION_COLUMNS, 'a.')}"
                " FROM ledger_holds h JOIN ledger_authorizations a ON a.nonce = h.idempotency_key"
                " WHERE h.phase = 'in_doubt' ORDER BY h.id",
            ).all()
        return [(hold_info(row), _authorization(row)) for row in rows]


def _authorization(row: Any) -> Authorization:
    return Authorization(
        network=row.network,
        asset=row.asset,
        payer=row.payer,
        nonce=row.nonce,
        value=Amount(row.value, row.unit),
        valid_before=from_us(row.valid_before_us),
    )
