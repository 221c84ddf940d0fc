"""x402 payments as the fake x402 server (tests/upstreams/fake_x402.py) verifies them, for tests on any floor."""

from __future__ import annotations

from typing import Any

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: the fake's clock starts here
PAYER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"


def payment_for(
    required: dict[str, Any], nonce_byte: str, *, now: int = T0, value: str | None = None
) -> dict[str, Any]:
    """A PaymentPayload for the first requirement, as fake_x402 verifies it (nonce: `nonce_byte` x 32)."""
    accepted = required["accepts"][0]
    return {
        "x402Version": 2,
        "resource": required["resource"],
        "accepted": accepted,
        "payload": {
            "signature": "0x" + "2d" * 65,
            "authorization": {
                "from": PAYER,
                "to": accepted["payTo"],
                "value": value or accepted["amount"],
                "validAfter": str(now - 10),
                "validBefore": str(now + 60),
                "nonce": "0x" + nonce_byte * 32,
            },
        },
    }
