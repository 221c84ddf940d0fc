"""x402 transfer authorizations kept by nonce (the payment's idempotency key), and the holds in doubt they
belong to: what chain reconciliation reads. On a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime

from ledgers import Amount, Authorization, Budget, Ledger

NONCE = "0x" + "ab" * 32
BEFORE = datetime(2026, 11, 21, 12, 5, tzinfo=UTC)
BUDGET = Budget("b", Amount(1_000_000, "usdc"))


def authorization(nonce: str = NONCE, value: int = 10_000, payer: str = "0xPayer") -> Authorization:
    return Authorization("eip155:8453", "0xToken", payer, nonce, Amount(value, "usdc"), BEFORE)


def test_an_authorization_is_kept_by_its_nonce_and_the_first_one_stays(ledger: Ledger) -> None:
    assert ledger.authorization(NONCE) is None
    ledger.remember_authorization(authorization())
    ledger.remember_authorization(authorization(value=99, payer="0xSomeoneElse"))  # the chain uses a nonce once
    assert ledger.authorization(NONCE) == authorization()


def test_only_holds_in_doubt_whose_payment_carried_an_authorization_are_listed_with_it(ledger: Ledger) -> None:
    doubtful = ledger.reserve([BUDGET], Amount(10_000, "usdc"), idempotency_key=NONCE, tool="get_weather")
    ledger.remember_authorization(authorization())
    settled = ledger.reserve([BUDGET], Amount(10_000, "usdc"), idempotency_key="0x" + "cd" * 32)
    ledger.remember_authorization(authorization("0x" + "cd" * 32))
    unauthorized = ledger.reserve([BUDGET], Amount(5, "usdc"), idempotency_key="sha256:whole-payment")
    for hold in (doubtful, settled, unauthorized):
        ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(doubtful)
    ledger.mark_in_doubt(unauthorized)
    ledger.settle(settled, Amount(10_000, "usdc"))

    [(hold, found)] = ledger.authorized_in_doubt()
    assert (hold.id, hold.tool, hold.amount) == (doubtful, "get_weather", Amount(10_000, "usdc"))
    assert found == authorization()
