"""x402 over MCP: a call pays when it carries `_meta["x402/payment"]`, at the price the payment names,
and settles from the receipt in `_meta["x402/payment-response"]`.

Shapes are the x402 MCP transport's (transports-v2/mcp; v1 field names where noted)."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.payments.adapters._facts import Outcome, Prepared, Quote
from guard.payments.adapters.x402 import X402
from ledgers import Amount, AmountError
from tests.upstreams.x402_payments import PAYER

JSON = dict[str, Any]

BASE = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
BASE_SEPOLIA = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
OTHER = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
NONCE = "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
SIGNATURE = (
    "0x2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd1509"
    "2f9ecab05ded3d6293af148b571c"
)
TX = "0x1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"
RESOURCE = {
    "url": "mcp://tool/financial_analysis",
    "description": "Advanced financial analysis tool",
    "mimeType": "application/json",
}

ADAPTER = X402()


def requirement(amount: object = "10000", asset: str = BASE_SEPOLIA, scheme: str = "exact", **more: object) -> JSON:
    return {
        "scheme": scheme,
        "network": "eip155:84532",
        "amount": amount,
        "asset": asset,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2"},
        **more,
    }


def payment(accepted: JSON | None = None, value: object = "10000", nonce: object = NONCE) -> JSON:
    """A v2 PaymentPayload for the exact EVM scheme (EIP-3009 authorization)."""
    return {
        "x402Version": 2,
        "resource": dict(RESOURCE),
        "accepted": requirement() if accepted is None else accepted,
        "payload": {
            "signature": SIGNATURE,
            "authorization": {
                "from": PAYER,
                "to": PAY_TO,
                "value": value,
                "validAfter": "1740672089",
                "validBefore": "1740672154",
                "nonce": nonce,
            },
        },
    }


def meta(pay: object) -> JSON:
    return {"progressToken": 7, "x402/payment": pay}


def usdc(n: int) -> Amount:
    return Amount(n, "usdc")


def payment_required(*accepts: JSON, resource: JSON | None = RESOURCE, **more: object) -> JSON:
    required: JSON = {"x402Version": 2, "error": "Payment required to access this resource", "accepts": list(accepts)}
    if resource is not None:
        required["resource"] = resource
    required.update(more)
    return required


def unpaid(required: JSON) -> JSON:
    """A tool result asking for payment: `structuredContent` plus the `x402/error` wrapper in text."""
    wrapper = {"x402/error": {"code": 402, "message": "Payment required", "data": required}}
    return {"isError": True, "structuredContent": required, "content": [{"type": "text", "text": json.dumps(wrapper)}]}


def settled(**receipt: object) -> JSON:
    body = {"success": True, "transaction": TX, "network": "eip155:84532", "payer": PAYER, **receipt}
    return {
        "content": [{"type": "text", "text": "Financial analysis for AAPL: strong fundamentals."}],
        "_meta": {"x402/payment-response": body},
    }


def canonical_sha256(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


SVM_PAYMENT = {
    "x402Version": 2,
    "accepted": requirement(asset=BASE, network="eip155:8453"),
    "payload": {"transaction": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
}


@pytest.mark.parametrize("tool", ["financial_analysis", "l402-fetch", "p402_chat", "anything-at-all"])
def test_the_adapter_knows_every_tool_since_any_call_can_carry_a_payment(tool: str) -> None:
    assert ADAPTER.knows(tool)


@pytest.mark.parametrize(
    "call_meta",
    [
        pytest.param(None, id="no _meta"),
        pytest.param({}, id="an empty _meta"),
        pytest.param({"progressToken": 3}, id="a _meta without a payment"),
        pytest.param({"x402/payment": None}, id="a null payment"),
    ],
)
def test_a_call_without_a_payment_does_not_pay(call_meta: JSON | None) -> None:
    assert ADAPTER.prepare("financial_analysis", {"ticker": "AAPL"}, call_meta) == Prepared(pays=False)


@pytest.mark.parametrize(
    ("pay", "prepared"),
    [
        pytest.param(
            payment(),
            Prepared(pays=True, price=usdc(10_000), payment_id=NONCE),
            id="an exact payment costs its accepted amount in usdc, keyed by its nonce",
        ),
        pytest.param(
            payment(requirement(asset=BASE.lower(), network="eip155:8453")),
            Prepared(pays=True, price=usdc(10_000), payment_id=NONCE),
            id="Base mainnet USDC in lower case is usdc",
        ),
        pytest.param(
            payment(requirement(asset=BASE_SEPOLIA.upper().replace("0X", "0x"))),
            Prepared(pays=True, price=usdc(10_000), payment_id=NONCE),
            id="an upper-case asset address is the same asset",
        ),
        pytest.param(
            payment(requirement("250000", scheme="upto"), value="250000"),
            Prepared(pays=True, price=usdc(250_000), upto=True, payment_id=NONCE),
            id="an upto payment's amount is a maximum",
        ),
        pytest.param(
            payment({k: v for k, v in requirement().items() if k != "amount"} | {"maxAmountRequired": "5000"}, "5000"),
            Prepared(pays=True, price=usdc(5000), payment_id=NONCE),
            id="the v1 field maxAmountRequired names the price",
        ),
        pytest.param(
            payment(requirement(10000)),
            Prepared(pays=True, price=usdc(10_000), payment_id=NONCE),
            id="an amount sent as a JSON number is read",
        ),
        pytest.param(
            payment(requirement("0"), value="0"),
            Prepared(pays=True, price=usdc(0), payment_id=NONCE),
            id="a free payment costs nothing",
        ),
        pytest.param(
            payment(requirement("10000"), value="90000"),
            Prepared(pays=True, price=usdc(90_000), payment_id=NONCE),
            id="a signed authorization above the accepted amount bounds the price",
        ),
        pytest.param(
            payment(requirement("10000"), value="garbage"),
            Prepared(pays=True, price=usdc(10_000), payment_id=NONCE),
            id="an unreadable authorization value leaves the accepted amount",
        ),
    ],
)
def test_a_payment_names_its_price_unit_and_id(pay: JSON, prepared: Prepared) -> None:
    assert ADAPTER.prepare("financial_analysis", {}, meta(pay)) == prepared


def test_a_payment_names_the_resource_it_pays_for_without_its_query() -> None:
    pay = payment() | {"resource": {"url": "https://api.example/report?key=sk_live_secret#top"}}
    prepared = ADAPTER.prepare("financial_analysis", {}, meta(pay))
    assert prepared.paid_for == "https://api.example/report"
    assert ADAPTER.prepare("t", {}, meta(payment())).paid_for == "mcp://tool/financial_analysis"


def test_a_payment_without_a_nonce_is_keyed_by_a_hash_of_the_whole_payment_never_the_signature() -> None:
    prepared = ADAPTER.prepare("t", {}, meta(SVM_PAYMENT))
    assert prepared == Prepared(pays=True, price=usdc(10_000), payment_id=canonical_sha256(SVM_PAYMENT))
    reordered = dict(reversed(list(copy.deepcopy(SVM_PAYMENT).items())))
    assert ADAPTER.prepare("t", {}, meta(reordered)).payment_id == prepared.payment_id
    assert SVM_PAYMENT["payload"]["transaction"] not in str(prepared.payment_id)  # type: ignore[index]


def test_a_payment_identifier_extension_keys_a_payment_without_a_nonce() -> None:
    pay = copy.deepcopy(SVM_PAYMENT) | {
        "extensions": {"payment-identifier": {"info": {"id": "pay_7d5d747be160e280504c099d984bcfe0"}}}
    }
    assert ADAPTER.prepare("t", {}, meta(pay)).payment_id == "pay_7d5d747be160e280504c099d984bcfe0"


def test_a_payment_in_an_asset_the_policy_names_is_priced_in_that_unit() -> None:
    adapter = X402(assets={OTHER.upper().replace("0X", "0x"): "eurc"})
    assert adapter.prepare("t", {}, meta(payment(requirement(asset=OTHER)))) == Prepared(
        pays=True, price=Amount(10_000, "eurc"), payment_id=NONCE
    )


def test_an_asset_mapped_to_an_unknown_unit_is_refused_when_the_adapter_is_built() -> None:
    with pytest.raises(AmountError):
        X402(assets={OTHER: "dollars"})


@pytest.mark.parametrize(
    ("pay", "refusal"),
    [
        pytest.param(payment(requirement(asset=OTHER)), "unknown asset", id="an unknown asset"),
        pytest.param(
            payment({k: v for k, v in requirement().items() if k != "asset"}),
            "no asset",
            id="a payment naming no asset",
        ),
        pytest.param(payment(requirement("0.01")), "not a whole number", id="a fractional atomic amount"),
        pytest.param(payment(requirement("-10000")), "negative", id="a negative amount"),
        pytest.param(payment(requirement("1e30")), "too large", id="a huge amount"),
        pytest.param(payment(requirement("NaN")), "finite", id="a NaN amount"),
        pytest.param(payment(requirement("ten")), "not a number", id="a word for an amount"),
        pytest.param(payment(requirement(None)), "missing", id="no amount at all"),
        pytest.param(payment(requirement(True)), "not a number", id="a boolean amount"),
        pytest.param(
            {"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": payment()["payload"]},
            "accepted",
            id="a v1 payload that names no requirements",
        ),
        pytest.param("eyJ4NDAyVmVyc2lvbiI6Mn0=", "not an object", id="a payment that is not an object"),
    ],
)
def test_a_payment_that_cannot_be_priced_is_refused(pay: object, refusal: str) -> None:
    prepared = ADAPTER.prepare("financial_analysis", {}, meta(pay))
    assert (prepared.pays, prepared.price) == (True, None)
    assert prepared.refuse is not None and refusal in prepared.refuse
    assert SIGNATURE not in prepared.refuse and NONCE not in prepared.refuse


def test_an_unknown_asset_refusal_says_how_to_fix_it() -> None:
    prepared = ADAPTER.prepare("t", {}, meta(payment(requirement(asset=OTHER))))
    assert prepared.refuse == f"unknown asset '{OTHER}' on 'eip155:84532': name its unit in the policy"


@pytest.mark.parametrize(
    ("pay", "result", "outcome"),
    [
        pytest.param(
            payment(),
            settled(),
            Outcome("paid", spent=usdc(10_000)),
            id="a settled exact payment spent its price",
        ),
        pytest.param(
            payment(),
            settled(amount="10000"),
            Outcome("paid", spent=usdc(10_000)),
            id="a receipt naming the price spent the price",
        ),
        pytest.param(
            payment(requirement("250000", scheme="upto"), value="250000"),
            settled(amount="180000"),
            Outcome("paid", spent=usdc(180_000)),
            id="an upto payment spent what the receipt names, below its maximum",
        ),
        pytest.param(
            payment(requirement("250000", scheme="upto"), value="250000"),
            settled(),
            Outcome("paid", spent=usdc(250_000)),
            id="an upto payment without a receipt amount spent its maximum",
        ),
        pytest.param(
            payment(requirement("250000", scheme="upto"), value="250000"),
            settled(amount=0),
            Outcome("paid", spent=usdc(0)),
            id="an upto payment can settle at nothing",
        ),
        pytest.param(
            payment(),
            settled() | {"isError": True},
            Outcome("paid", spent=usdc(10_000)),
            id="a settled payment is paid even when the tool then failed",
        ),
        pytest.param(
            payment(),
            {
                "content": [],
                "_meta": {"x402/payment-response": {"success": False, "errorReason": "transaction_failed"}},
            },
            Outcome("not_paid"),
            id="a reverted settlement paid nothing",
        ),
    ],
)
def test_a_paid_call_settles_from_its_receipt(pay: JSON, result: JSON, outcome: Outcome) -> None:
    assert ADAPTER.outcome("financial_analysis", {}, meta(pay), result) == outcome


@pytest.mark.parametrize(
    ("pay", "result", "spent", "flagged"),
    [
        pytest.param(
            payment(requirement("250000", scheme="upto"), value="250000"),
            settled(amount="300000"),
            usdc(250_000),
            "more than the payment allowed",
            id="an upto receipt above the maximum settles at the maximum",
        ),
        pytest.param(
            payment(),
            settled(amount="9000"),
            usdc(10_000),
            "exact payment",
            id="an exact payment's receipt for less still settles at the price",
        ),
        pytest.param(
            payment(),
            settled(amount="ten thousand"),
            usdc(10_000),
            "amount",
            id="an unreadable receipt amount settles at the price",
        ),
        pytest.param(
            payment(),
            settled(amount="-1"),
            usdc(10_000),
            "negative",
            id="a negative receipt amount settles at the price",
        ),
        pytest.param(
            payment(requirement(asset=OTHER)),
            settled(),
            None,
            "price is unreadable",
            id="a settled payment that could not be priced is paid at the reserved amount",
        ),
    ],
)
def test_a_receipt_that_contradicts_the_payment_is_flagged_and_settled_at_the_price(
    pay: JSON, result: JSON, spent: Amount | None, flagged: str
) -> None:
    outcome = ADAPTER.outcome("financial_analysis", {}, meta(pay), result)
    assert (outcome.state, outcome.spent) == ("paid", spent)
    assert outcome.problem is not None and flagged in outcome.problem


QUOTE = Quote("mcp://tool/financial_analysis", usdc(10_000), x402_tool="financial_analysis")


@pytest.mark.parametrize(
    ("result", "quotes"),
    [
        pytest.param(unpaid(payment_required(requirement())), (QUOTE,), id="structuredContent names the price"),
        pytest.param(
            {
                "isError": True,
                "structuredContent": {"x402/error": {"code": 402, "data": payment_required(requirement())}},
            },
            (QUOTE,),
            id="the x402/error wrapper in structuredContent names the price",
        ),
        pytest.param(
            {"isError": True, "content": [{"type": "text", "text": json.dumps(payment_required(requirement()))}]},
            (QUOTE,),
            id="a PaymentRequired in the text names the price",
        ),
        pytest.param(
            {
                "isError": True,
                "content": [
                    {"type": "text", "text": json.dumps({"x402/error": {"data": payment_required(requirement())}})}
                ],
            },
            (QUOTE,),
            id="the x402/error wrapper in the text names the price",
        ),
        pytest.param(
            unpaid(payment_required(requirement("30000"), requirement("10000", asset=BASE), requirement("20000"))),
            (QUOTE,),
            id="the cheapest accepted price is quoted",
        ),
        pytest.param(
            unpaid(payment_required(requirement("1", asset=OTHER), requirement("10000"))),
            (QUOTE,),
            id="a price in an unknown asset is skipped",
        ),
        pytest.param(
            unpaid(payment_required(requirement("abc"), requirement("-1"), "junk", requirement("10000"))),
            (QUOTE,),
            id="unreadable prices are skipped",
        ),
        pytest.param(
            unpaid(payment_required(requirement("1", asset=OTHER))), (), id="no price in a known asset quotes nothing"
        ),
        pytest.param(
            unpaid(payment_required(requirement(), resource=None)),
            (Quote("tool:financial_analysis", usdc(10_000), x402_tool="financial_analysis"),),
            id="without a resource the tool is quoted",
        ),
        pytest.param(
            unpaid(
                {
                    "x402Version": 1,
                    "error": "Payment required to access this resource",
                    "accepts": [
                        {
                            "scheme": "exact",
                            "network": "base-sepolia",
                            "maxAmountRequired": "10000",
                            "asset": BASE_SEPOLIA,
                            "payTo": PAY_TO,
                            "resource": "mcp://tool/financial_analysis",
                            "description": "Advanced financial analysis tool",
                            "mimeType": "application/json",
                            "outputSchema": None,
                            "maxTimeoutSeconds": 60,
                            "extra": {"name": "USDC", "version": "2"},
                        }
                    ],
                }
            ),
            (QUOTE,),
            id="a v1 PaymentRequired names its price as maxAmountRequired",
        ),
    ],
)
def test_a_payment_required_answer_to_an_unpaid_call_is_a_quote(result: JSON, quotes: tuple[Quote, ...]) -> None:
    assert ADAPTER.outcome("financial_analysis", {}, None, result) == Outcome("no_payment", quotes=quotes)


def test_a_payment_required_answer_to_a_paid_call_means_the_payment_was_refused() -> None:
    required = payment_required(requirement(), error="invalid_exact_evm_payload_signature")
    outcome = ADAPTER.outcome("financial_analysis", {}, meta(payment()), unpaid(required))
    assert outcome == Outcome("not_paid", quotes=(QUOTE,))


def test_a_failed_settlement_reported_in_structured_content_paid_nothing() -> None:
    required = payment_required(
        requirement(),
        error="Payment settlement failed: insufficient funds",
        **{"x402/payment-response": {"success": False, "errorReason": "insufficient_funds", "transaction": ""}},
    )
    outcome = ADAPTER.outcome("financial_analysis", {}, meta(payment()), unpaid(required))
    assert outcome == Outcome("not_paid", quotes=(QUOTE,))


def settlement_failed(reason: object) -> JSON:
    """A failed settlement as the official SDK's MCP wrapper answers it (x402 2.25.0,
    `_create_settlement_failed_result`): the PaymentRequired again, with the failure beside it in
    `structuredContent` (not in `_meta`), `transaction` always empty."""
    body = payment_required(requirement(), error=f"Payment settlement failed: {reason}")
    body["x402/payment-response"] = {
        "success": False,
        "errorReason": reason,
        "transaction": "",
        "network": "eip155:84532",
    }
    return unpaid(body)


@pytest.mark.parametrize(
    "reason",
    [
        "transaction_failed",
        "invalid_exact_evm_payload_signature",
        "invalid_exact_evm_insufficient_balance",
        "invalid_exact_evm_payload_authorization_valid_before",
        "invalid_exact_evm_transaction_simulation_failed",
        "insufficient_funds",
    ],
)
def test_a_settlement_that_provably_moved_nothing_voids(reason: str) -> None:
    """A revert, or the facilitator's re-verification refusing the payment before broadcasting it."""
    outcome = ADAPTER.outcome("financial_analysis", {}, meta(payment()), settlement_failed(reason))
    assert outcome == Outcome("not_paid", quotes=(QUOTE,))


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("settlement_pending", id="broadcast, receipt lost (the SDK: the transfer may have landed)"),
        pytest.param("invalid_exact_evm_nonce_already_used", id="the authorization was used: perhaps by this payment"),
        pytest.param("invalid_exact_evm_transfer_event_mismatch", id="a transaction succeeded with another transfer"),
        pytest.param("HTTPConnectionPool: Read timed out", id="the SDK puts an exception's words in errorReason"),
        pytest.param(None, id="no reason"),
        pytest.param(["transaction_failed"], id="a reason that is not text"),
    ],
)
def test_a_settlement_that_may_have_moved_money_stays_in_doubt(reason: object) -> None:
    outcome = ADAPTER.outcome("financial_analysis", {}, meta(payment()), settlement_failed(reason))
    assert outcome.state == "unknown"
    assert outcome.problem is not None and "may have happened" in outcome.problem


def test_a_tool_that_failed_after_the_payment_was_verified_leaves_it_in_doubt() -> None:
    """The official SDK answers a handler's exception with `Tool execution error: …` and no x402 field: it
    does not settle, but the signed authorization could still be used until its validBefore."""
    result = {"content": [{"type": "text", "text": "Tool execution error: boom"}], "isError": True}
    outcome = ADAPTER.outcome("financial_analysis", {}, meta(payment()), result)
    assert outcome.state == "unknown"
    assert outcome.problem == "x402: the tool failed after the payment was verified, with no settlement receipt"


def test_a_payment_carries_its_signed_authorization_for_the_chain() -> None:
    prepared = ADAPTER.prepare("financial_analysis", {}, meta(payment()))
    auth = prepared.authorization
    assert auth is not None
    assert (auth.network, auth.asset, auth.payer, auth.nonce) == ("eip155:84532", BASE_SEPOLIA, PAYER, NONCE)
    assert auth.value == usdc(10_000)
    valid_before = payment()["payload"]["authorization"]["validBefore"]
    assert auth.valid_before.timestamp() == int(valid_before)


@pytest.mark.parametrize("field", ["from", "nonce", "validBefore", "value"])
def test_a_payment_whose_authorization_is_unreadable_carries_none_and_still_pays(field: str) -> None:
    pay = payment()
    pay["payload"]["authorization"][field] = {"not": "readable"}
    prepared = ADAPTER.prepare("financial_analysis", {}, meta(pay))
    assert prepared.pays and prepared.authorization is None


def test_a_successful_result_that_looks_like_a_payment_required_is_no_quote() -> None:
    result = {"structuredContent": payment_required(requirement()), "content": []}
    assert ADAPTER.outcome("list_prices", {}, None, result) == Outcome("no_payment")


@pytest.mark.parametrize(
    ("result", "flagged"),
    [
        pytest.param(
            {"content": [{"type": "text", "text": "analysis"}]}, "without a settlement receipt", id="no receipt"
        ),
        pytest.param({"content": [{"type": "text", "text": "boom"}], "isError": True}, "receipt", id="a plain error"),
        pytest.param({}, "receipt", id="an empty result"),
        pytest.param({"_meta": {"x402/payment-response": "ok"}}, "receipt", id="a receipt that is not an object"),
        pytest.param(settled(success="true"), "success is unreadable", id="a receipt whose success is not a boolean"),
        pytest.param({"_meta": {"x402/payment-response": {}}}, "success is unreadable", id="an empty receipt"),
    ],
)
def test_a_paid_call_without_a_readable_receipt_or_refusal_is_in_doubt(result: JSON, flagged: str) -> None:
    outcome = ADAPTER.outcome("financial_analysis", {}, meta(payment()), result)
    assert (outcome.state, outcome.spent) == ("unknown", None)
    assert outcome.problem is not None and flagged in outcome.problem


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        pytest.param({"content": [{"type": "text", "text": "free"}]}, None, id="a plain answer"),
        pytest.param(
            {"content": [], "isError": True},
            None,
            id="a plain error",
        ),
        pytest.param(settled(), "no payment", id="a receipt nobody paid for is flagged"),
    ],
)
def test_a_call_without_a_payment_pays_nothing(result: JSON, problem: str | None) -> None:
    outcome = ADAPTER.outcome("financial_analysis", {}, None, result)
    assert (outcome.state, outcome.spent) == ("no_payment", None)
    if problem is None:
        assert outcome.problem is None
    else:
        assert outcome.problem is not None and problem in outcome.problem


def test_the_adapter_has_no_observation_to_refresh() -> None:
    assert ADAPTER.refresh("quote:mcp://tool/financial_analysis") is None


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["success", "amount", "maxAmountRequired", "scheme", "accepts", "resource", "x402/error"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    accepted=st.none() | st.just(requirement()) | ANY_JSON,
    receipt=ANY_JSON,
    structured=ANY_JSON,
    error=st.booleans(),
)
def test_no_payment_or_answer_makes_the_adapter_raise_or_leak_a_secret(
    accepted: object, receipt: object, structured: object, error: bool
) -> None:
    pay = payment(accepted) if isinstance(accepted, dict) else {**payment(), "accepted": accepted}
    if isinstance(receipt, dict):
        receipt = {**receipt, "transaction": TX, "payer": PAYER}
    result = {"isError": error, "structuredContent": structured, "_meta": {"x402/payment-response": receipt}}
    prepared = ADAPTER.prepare("t", {}, meta(pay))
    outcome = ADAPTER.outcome("t", {}, meta(pay), result)
    assert prepared.pays
    assert outcome.state in ("paid", "not_paid", "unknown")
    for secret in (SIGNATURE, NONCE, TX, PAYER):
        assert secret not in f"{prepared.refuse} {outcome.problem}"
