"""Golden answers: every tool answer recorded from the real 402-mcp 4.2.1 (tests/captures/402-mcp-4.2.1),
read by the 402-mcp adapter, gives the facts a human reading it gives. The facts are written out by hand
per capture (the table below), never computed by the adapter.

What 402-mcp did that our reading of it did not expect, each named in the table:
- `l402-pay` refused before paying (per-minute limit) answers `{"paid": false, "reason"}` with no
  `paymentState` (paywall-limits-07): nothing was paid;
- `l402-buy-credits` over its own per-request limit answers `{"error": …}` (paywall-limits-05): nothing paid;
- an `autoPay` fetch with no wallet answers 402 with `costSats`, `paymentHash` and a payment page, no
  invoice (paywall-human-07); the `l402-pay {paymentHash}` that follows answers `{paid: true}` with neither
  amount nor `paymentState` (paywall-human-09): its price is only in the earlier 402;
- an `autoPay` fetch whose origin's credits ran out is not paid (paywall-limits-03): 402-mcp asks for
  `l402-buy-credits` instead;
- a discover of a toll-booth server names no credit tiers (paywall-human-03);
- with widgets on, 402-mcp serves two more tools, `l402-wallet-dashboard` and `l402-service-directory`
  (widgets-01), which pay nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pytest

from guard.payments.adapters.l402_mcp import L402Mcp
from ledgers import Amount
from tests.captures.files import capture, names

ADAPTER = L402Mcp()
BOOTH = "http://127.0.0.1:8402"
JOKE = f"{BOOTH}/api/joke"
PREMIUM = f"{BOOTH}/api/premium"
CREDITS = f"credits:{BOOTH}"


def sat(n: int) -> Amount:
    return Amount(n, "sat")


def msat(n: int) -> Amount:
    return Amount(n, "msat")


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


@dataclass(frozen=True)
class Facts:
    """What a human reads in one capture: whether the call pays and its own price (before it is sent);
    what happened (paid / not_paid / unknown / no_payment), what was spent, the payment it names (a hash's
    first 8 hex digits); the prices it names (resource, amount, hash prefix, expiry); the credits it shows
    (value, or None with a status); the payments it proves were made; a problem (a part of its text)."""

    pays: bool = False
    price: Amount | None = None
    state: str = "no_payment"
    spent: Amount | None = None
    payment: str | None = None
    quotes: tuple[tuple[str | None, Amount, str, datetime | None], ...] = ()
    credits: tuple[tuple[int | None, str | None], ...] = ()
    proven: tuple[str, ...] = ()
    problem: str | None = None


# An invoice of toll-booth's is dated when the 402 was made and expires an hour later (BOLT11's `x` 3600).
HUMAN_INVOICES_EXPIRE = at("2026-11-21T07:51:21+00:00")
LIMITS_INVOICES_EXPIRE = at("2026-11-21T07:51:33+00:00")

GOLDEN: dict[str, Facts] = {
    # --- no wallet: reading only
    "readonly-02-l402-config": Facts(),
    "readonly-03-l402-credentials": Facts(),
    "readonly-04-l402-balance-no-creds": Facts(credits=((None, "no-credentials"),)),
    "readonly-05-l402-fetch-preview-free": Facts(),
    "readonly-06-l402-fetch-preview-paywall": Facts(
        quotes=((JOKE, sat(21), "6ada798b", at("2026-11-21T07:52:47.844+00:00")),)  # expiresAt, epoch ms
    ),
    "readonly-07-l402-discover-free": Facts(),  # "Expected 402 but got 200": nothing to pay
    # --- a human wallet: a 402 with a payment page, a human pays, l402-pay collects the credential
    "paywall-human-02-l402-config": Facts(),
    # The invoice's exact amount (21 000 msat), by the URL and by the hash 402-mcp cached it under.
    "paywall-human-03-l402-discover": Facts(quotes=((JOKE, msat(21_000), "218b1e78", HUMAN_INVOICES_EXPIRE),)),
    "paywall-human-04-l402-fetch-preview": Facts(
        quotes=((JOKE, sat(21), "572890f2", at("2026-11-21T07:51:21.550+00:00")),)
    ),
    "paywall-human-05-l402-fetch-nopay": Facts(
        payment="9e0df9d9", quotes=((JOKE, msat(21_000), "9e0df9d9", HUMAN_INVOICES_EXPIRE),)
    ),
    "paywall-human-06-l402-buy-credits-tiers": Facts(),  # no amountSats: the tiers are listed, nothing bought
    # autoPay, no wallet: not paid; the price is costSats (no invoice), by URL and by hash, for the l402-pay.
    "paywall-human-07-l402-fetch-autopay-human": Facts(
        pays=True, state="not_paid", payment="fe013bf6", quotes=((JOKE, sat(21), "fe013bf6", None),)
    ),
    # Paid by hash: no amount in the answer (the hold's price, the quote of capture 07, is what was paid).
    "paywall-human-09-l402-pay": Facts(pays=True, state="paid", payment="fe013bf6"),
    "paywall-human-10-l402-fetch-paid": Facts(credits=((16, None),)),  # satsPaid 0: the credential was used
    "paywall-human-11-l402-balance": Facts(credits=((16, None),)),
    "paywall-human-12-l402-credentials": Facts(credits=((16, None),), proven=("fe013bf6",)),
    "paywall-human-13-l402-fetch-again": Facts(credits=((11, None),)),
    "paywall-human-14-l402-fetch-premium-insufficient": Facts(
        payment="be2bc4e7",
        quotes=((PREMIUM, msat(21_000), "be2bc4e7", HUMAN_INVOICES_EXPIRE),),
        credits=((0, "exhausted"),),
    ),
    "paywall-human-15-l402-credentials-after": Facts(),
    # --- 402-mcp's own limits (an NWC wallet, MAX_AUTO_PAY_SATS 50)
    "paywall-limits-01-l402-config": Facts(),
    "paywall-limits-02-l402-fetch-autopay-ok": Facts(pays=True, state="paid", spent=sat(21), credits=((16, None),)),
    "paywall-limits-03-l402-fetch-premium-credits-exhausted": Facts(
        pays=True,
        state="not_paid",
        payment="232a6270",
        quotes=((PREMIUM, msat(21_000), "232a6270", LIMITS_INVOICES_EXPIRE),),
        credits=((0, "exhausted"),),
    ),
    "paywall-limits-04-l402-fetch-premium-spend-limit": Facts(
        pays=True,
        state="not_paid",
        payment="a48225a7",
        quotes=((PREMIUM, msat(21_000), "a48225a7", LIMITS_INVOICES_EXPIRE),),
    ),
    "paywall-limits-05-l402-buy-credits-over-limit": Facts(pays=True, price=sat(100), state="not_paid"),
    "paywall-limits-06-l402-discover": Facts(
        quotes=(("http://127.0.0.1:8402/api/echo", msat(21_000), "3d669c54", LIMITS_INVOICES_EXPIRE),)
    ),
    "paywall-limits-07-l402-pay-spend-limit": Facts(pays=True, state="not_paid", payment="3d669c54"),
    "paywall-limits-08-l402-credentials": Facts(),
    # --- a token bought outside 402-mcp, stored, used; a Cashu redemption
    "paywall-token-05-l402-store-token": Facts(),
    "paywall-token-06-l402-credentials": Facts(credits=((None, None),), proven=("47031f4b",)),  # creditBalance null
    "paywall-token-07-l402-fetch-with-stored-token": Facts(credits=((105, None),)),
    "paywall-token-08-l402-balance": Facts(credits=((105, None),)),
    "paywall-token-09-l402-store-token-bad": Facts(),
    # Redeemed: paid, but the token's value is not in the answer (creditsReceived is the server's credits).
    "paywall-token-10-l402-redeem-cashu-mock": Facts(pays=True, state="paid"),
    "paywall-token-11-l402-fetch-after-cashu": Facts(credits=((7, None),)),
    "paywall-token-12-l402-balance-after-cashu": Facts(credits=((7, None),)),
    "paywall-token-13-l402-search-local-relay": Facts(),
    # --- 402-mcp's default SSRF refusal of loopback URLs
    "ssrf-default-01-l402-fetch-preview-loopback": Facts(),
    "ssrf-default-02-l402-fetch-loopback": Facts(problem="the call failed"),  # no autoPay: nothing could pay
    # --- widgets
    "widgets-02-l402-wallet-dashboard": Facts(),
}

# The captures that are no tool answer: the handshakes, tool lists, and what a human or the paywall did
# over HTTP outside MCP.
NOT_TOOL_ANSWERS = {name for name in names() if name.endswith(("-initialize", "-tools-list")) or "-http-" in name}


def test_every_capture_is_in_the_golden_table_or_is_no_tool_answer() -> None:
    assert set(GOLDEN) | NOT_TOOL_ANSWERS == set(names()) and not set(GOLDEN) & NOT_TOOL_ANSWERS
    assert len(names()) == 54


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_real_402_mcp_answer_reads_as_a_human_reads_it(name: str) -> None:
    recorded = capture(name)
    params = recorded["request"]["params"]
    tool, arguments = params["name"], params.get("arguments", {})
    expected = GOLDEN[name]

    prepared = ADAPTER.prepare(tool, arguments, None)
    outcome = ADAPTER.outcome(tool, arguments, None, recorded["response"]["result"])

    assert (prepared.pays, prepared.price) == (expected.pays, expected.price)
    assert (outcome.state, outcome.spent) == (expected.state, expected.spent)
    assert (outcome.payment_id or "")[:8] == (expected.payment or "")
    quotes = tuple((q.resource, q.amount, (q.payment_id or "")[:8], q.expires) for q in outcome.quotes)
    assert quotes == expected.quotes
    assert all(o.key == CREDITS for o in outcome.observations)
    credits = tuple((o.amount.value if o.amount else None, o.status) for o in outcome.observations)
    assert credits == expected.credits
    assert tuple(p[:8] for p in outcome.proven_paid) == expected.proven
    if expected.problem is None:
        assert outcome.problem is None
    else:
        assert outcome.problem is not None and expected.problem in outcome.problem


def test_l402_pay_by_hash_names_the_payment_it_pays_and_no_price_of_its_own() -> None:
    """The call carries only the hash: its price can come only from a quote stored for that hash."""
    params = capture("paywall-human-09-l402-pay")["request"]["params"]
    prepared = ADAPTER.prepare(params["name"], params["arguments"], None)
    assert (prepared.price, prepared.payment_id) == (None, params["arguments"]["paymentHash"])
