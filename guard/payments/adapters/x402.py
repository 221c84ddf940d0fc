"""x402 over MCP (spec transports-v2/mcp): a payment rides in any tool call's `_meta["x402/payment"]`.

So this adapter knows every tool, and a call pays exactly when it carries a payment. The payment
(a PaymentPayload: `{x402Version, resource?, accepted: {scheme, network, amount, asset, payTo, …},
payload: {signature, authorization: {…, value, nonce}}}`) names its price: `accepted.amount` (v1
field name: `maxAmountRequired`), a string of the asset's atomic units. The asset names the unit:
known USDC contracts are `usdc`; any other asset must be named by the policy (`X402(assets=…)`),
else the payment is refused. Scheme `upto` makes the price a maximum.

The answer: an unpaid call (or a refused payment) is `isError` with a PaymentRequired (`{x402Version,
accepts: [{scheme, network, amount | maxAmountRequired, asset, payTo, …}], resource?, error?}`) in
`structuredContent`, in `structuredContent["x402/error"].data`, or as JSON in the first text item;
a settled one carries `_meta["x402/payment-response"]` = `{success, transaction, network, payer,
amount?}` (the official SDK names no amount: the payment's price is what moved). A failed settlement
(the SDK puts it in `structuredContent` beside the PaymentRequired) is read by its `errorReason`:
only a reason that proves the transfer did not happen (`DEFINITE_FAILURES`: the transaction reverted, the
facilitator's verification refused the payment) voids the hold; `settlement_pending` (broadcast, receipt
lost), a used nonce, any other text (the SDK puts an exception's words there) leaves it in doubt. A
tool that fails after the payment was verified answers without any x402 field: in doubt too, since the
signed authorization stays usable until its `validBefore` (the chain settles it: `guard.payments.chains`).

Signatures and payloads never leave this module: the payment id is the authorization's nonce, the
payment-identifier extension's id, or a SHA-256 of the whole payment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from guard.core import JSON
from guard.payments.adapters._facts import Outcome, Prepared, Quote, Refresh
from guard.payments.adapters._json import Unreadable, amount, as_dict, decimal, dig, parse_json, short, text_of
from ledgers import Amount, Authorization
from ledgers._money import check_unit

PAYMENT = "x402/payment"
RECEIPT = "x402/payment-response"

# USDC contracts (6 decimals: their atomic unit is the ledger's `usdc`), keyed lower case.
KNOWN_ASSETS: Mapping[str, str] = {
    "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913": "usdc",  # Base mainnet (eip155:8453)
    "0x036cbd53842c5426634e7929541ec2318f3dcf7e": "usdc",  # Base Sepolia (eip155:84532)
}

# Settlement failures (`errorReason`) that prove the transfer did not happen: the transaction reverted
# (`transaction_failed`), or the facilitator refused the payment before broadcasting it (its re-verify:
# a bad signature, value, recipient, time window, balance, domain, network, scheme; a smart wallet it
# could not deploy). Read from the official SDK (x402 2.25.0, `mechanisms/evm/constants.py`) and the
# spec's error codes. Every other reason leaves the payment in doubt, notably:
# - `settlement_pending`: the transaction was broadcast and its receipt lost: it may have landed;
# - `invalid_exact_evm_nonce_already_used`: the authorization was used: perhaps by this very payment;
# - `invalid_exact_evm_transfer_event_mismatch`: a transaction succeeded, with another transfer in it;
# - free text: the SDK's MCP wrapper puts an exception's words (`str(e)`) in `errorReason`.
# (The SDK also maps an unrecognised error while broadcasting to `transaction_failed`; taken at its word.)
DEFINITE_FAILURES = frozenset(
    {
        "transaction_failed",
        "insufficient_funds",
        "invalid_exact_evm_payload_signature",
        "invalid_exact_evm_payload_undeployed_smart_wallet",
        "invalid_exact_evm_payload_recipient_mismatch",
        "invalid_exact_evm_payload_authorization_value_mismatch",
        "invalid_exact_evm_payload_authorization_value",
        "invalid_exact_evm_payload_authorization_valid_before",
        "invalid_exact_evm_payload_authorization_valid_after",
        "invalid_exact_evm_insufficient_balance",
        "invalid_exact_evm_failed_to_get_network_config",
        "invalid_exact_evm_failed_to_get_asset_info",
        "invalid_exact_evm_failed_to_verify_signature",
        "invalid_exact_evm_token_name_mismatch",
        "invalid_exact_evm_token_version_mismatch",
        "invalid_exact_evm_eip3009_not_supported",
        "invalid_exact_evm_transaction_simulation_failed",
        "invalid_upto_evm_transaction_failed",
        "invalid_payload",
        "invalid_payment_requirements",
        "invalid_network",
        "invalid_scheme",
        "invalid_x402_version",
        "unsupported_scheme",
        "network_mismatch",
        "missing_eip712_domain",
        "asset_not_deployed_contract",
        "eip6492_factory_not_allowed",
        "smart_wallet_deployment_failed",
    }
)


@dataclass(frozen=True)
class _Payment:
    price: Amount | None
    upto: bool
    payment_id: str | None
    refuse: str | None
    authorization: Authorization | None = None


class X402:
    """x402 payments in any tool call's `_meta`. `assets` maps more asset addresses to ledger units
    (`{"0xabc…": "usdc"}`); addresses match case-insensitively."""

    name = "x402"

    def __init__(self, assets: Mapping[str, str] | None = None) -> None:
        table = dict(KNOWN_ASSETS)
        for asset, unit in (assets or {}).items():
            table[asset.lower()] = check_unit(unit)
        self._assets = table

    tools: frozenset[str] = frozenset()  # any tool may take an x402 payment

    def knows(self, tool: str) -> bool:
        return True

    def prepare(self, tool: str, arguments: JSON, meta: JSON | None) -> Prepared:
        if not _carries_payment(meta):
            return Prepared(pays=False)
        payment = self._read_payment((meta or {})[PAYMENT])
        resource = dig((meta or {})[PAYMENT], "resource", "url")
        return Prepared(
            pays=True,
            price=payment.price,
            upto=payment.upto,
            payment_id=payment.payment_id,
            refuse=payment.refuse,
            resource=resource if isinstance(resource, str) and resource else None,
            authorization=payment.authorization,
        )

    def outcome(self, tool: str, arguments: JSON, meta: JSON | None, result: JSON) -> Outcome:
        required = _payment_required(result) if result.get("isError") is True else None
        quotes = self._quotes(tool, required) if required is not None else ()
        receipt = as_dict(dig(result, "_meta", RECEIPT))
        if receipt is None:
            receipt = as_dict(dig(result, "structuredContent", RECEIPT))

        if not _carries_payment(meta):
            problem = None
            if receipt is not None and receipt.get("success") is True:
                problem = "x402: a settlement receipt for a call that carried no payment"
            return Outcome("no_payment", quotes=quotes, problem=problem)

        payment = self._read_payment((meta or {})[PAYMENT])
        if receipt is not None:
            success = receipt.get("success")
            if success is True:
                return self._settled(payment, receipt, quotes)
            if success is False:
                return _failed_settlement(receipt, quotes)
            if required is None:
                return Outcome("unknown", quotes=quotes, problem="x402: the settlement receipt's success is unreadable")
        if required is not None:
            return Outcome("not_paid", quotes=quotes)  # the payment was refused before settling: asked to pay again
        if result.get("isError") is True:
            # The official SDK: the tool failed after the payment was verified; it does not settle, but
            # the signed authorization stays usable until its validBefore: only the chain can say.
            problem = "x402: the tool failed after the payment was verified, with no settlement receipt"
            return Outcome("unknown", quotes=quotes, problem=problem)
        return Outcome("unknown", quotes=quotes, problem="x402: a paid call answered without a settlement receipt")

    def refresh(self, key: str) -> Refresh | None:
        return None

    def _read_payment(self, payment: object) -> _Payment:
        payment_id = _payment_id(payment)
        body = as_dict(payment)
        if body is None:
            return _Payment(None, False, payment_id, "the x402 payment in _meta is not an object")
        accepted = as_dict(body.get("accepted"))
        if accepted is None:
            # A v1 payload ({x402Version: 1, scheme, network, payload}) names neither asset nor price.
            refuse = "the x402 payment names no `accepted` requirements: cannot price it"
            return _Payment(None, False, payment_id, refuse)
        upto = accepted.get("scheme", body.get("scheme")) == "upto"
        unit, refuse = self._unit(accepted)
        if unit is None:
            return _Payment(None, upto, payment_id, refuse)
        try:
            price = _atomic(accepted, unit, "accepted")
        except Unreadable as e:
            return _Payment(None, upto, payment_id, f"the x402 payment's price is unreadable: {e}")
        # The signed authorization is what can really move: never bound the call below it.
        try:
            signed = amount(dig(body, "payload", "authorization", "value"), "authorization.value", unit)
        except Unreadable:
            signed = None
        if signed is not None and signed.value > price.value:
            price = signed
        return _Payment(price, upto, payment_id, None, _authorization(body, accepted, unit))

    def _unit(self, requirement: JSON) -> tuple[str | None, str]:
        asset = requirement.get("asset")
        network = requirement.get("network")
        where = f" on {short(network)}" if network is not None else ""
        if not isinstance(asset, str) or not asset:
            return None, f"the x402 payment names no asset{where}: cannot price it"
        unit = self._assets.get(asset.lower())
        if unit is None:
            return None, f"unknown asset {short(asset, 60)}{where}: name its unit in the policy"
        return unit, ""

    def _settled(self, payment: _Payment, receipt: JSON, quotes: tuple[Quote, ...]) -> Outcome:
        price = payment.price
        if price is None:
            return Outcome("paid", quotes=quotes, problem="x402: settled, but the payment's price is unreadable")
        if receipt.get("amount") is None:
            return Outcome("paid", spent=price, quotes=quotes)
        try:
            settled = amount(receipt.get("amount"), "the receipt's amount", price.unit)
        except Unreadable as e:
            return Outcome("paid", spent=price, quotes=quotes, problem=f"x402: {e}: settled at the payment's price")
        if settled.value > price.value:
            problem = f"x402: the receipt's amount {settled} is more than the payment allowed ({price})"
            return Outcome("paid", spent=price, quotes=quotes, problem=f"{problem}: settled at the payment's price")
        if not payment.upto and settled.value != price.value:
            problem = f"x402: an exact payment of {price} has a receipt for {settled}"
            return Outcome("paid", spent=price, quotes=quotes, problem=f"{problem}: settled at the payment's price")
        return Outcome("paid", spent=settled, quotes=quotes)

    def _quotes(self, tool: str, required: JSON) -> tuple[Quote, ...]:
        """The cheapest accepted price in a known unit (in the first such unit listed)."""
        offers: list[tuple[Amount, JSON]] = []
        accepts = required.get("accepts")
        for requirement in accepts if isinstance(accepts, list) else []:
            if not isinstance(requirement, dict):
                continue
            unit, _ = self._unit(requirement)
            if unit is None:
                continue
            try:
                offers.append((_atomic(requirement, unit, "accepts[]"), requirement))
            except Unreadable:
                continue
        if not offers:
            return ()
        unit = offers[0][0].unit
        price, cheapest = min(((a, r) for a, r in offers if a.unit == unit), key=lambda offer: offer[0].value)
        resource = dig(required, "resource", "url")
        if not isinstance(resource, str) or not resource:
            resource = cheapest.get("resource")  # v1 names the resource in each requirement
        if not isinstance(resource, str) or not resource:
            resource = f"tool:{tool}"
        return (Quote(resource, price, x402_tool=tool),)


def _failed_settlement(receipt: JSON, quotes: tuple[Quote, ...]) -> Outcome:
    """`success: false`: void only when the reason proves the transfer did not happen, else in doubt."""
    reason = receipt.get("errorReason")
    if isinstance(reason, str) and reason in DEFINITE_FAILURES:
        return Outcome("not_paid", quotes=quotes)
    said = short(reason, 80) if reason is not None else "no errorReason"
    problem = f"x402: the settlement did not confirm ({said}): the transfer may have happened"
    return Outcome("unknown", quotes=quotes, problem=problem)


def _authorization(payment: JSON, accepted: JSON, unit: str) -> Authorization | None:
    """The payment's EIP-3009 authorization (`payload.authorization`: from, value, validBefore, nonce) on
    `accepted`'s network and asset, when every part of it is readable; else None (not reconcilable)."""
    signed = as_dict(dig(payment, "payload", "authorization"))
    network, asset = accepted.get("network"), accepted.get("asset")
    if signed is None or not isinstance(network, str) or not isinstance(asset, str):
        return None
    payer, nonce = signed.get("from"), signed.get("nonce")
    if not isinstance(payer, str) or not isinstance(nonce, str) or not payer or not nonce:
        return None
    try:
        value = amount(signed.get("value"), "authorization.value", unit)
        seconds = decimal(signed.get("validBefore"), "authorization.validBefore")
        valid_before = datetime.fromtimestamp(int(seconds), UTC)
    except (Unreadable, OverflowError, ValueError, OSError):
        return None
    return Authorization(network, asset, payer, nonce, value, valid_before)


def _carries_payment(meta: JSON | None) -> bool:
    return isinstance(meta, dict) and meta.get(PAYMENT) is not None


def _atomic(requirement: JSON, unit: str, where: str) -> Amount:
    """A requirement's price: `amount` (v2), else `maxAmountRequired` (v1), in atomic units."""
    if requirement.get("amount") is not None:
        return amount(requirement["amount"], f"{where}.amount", unit)
    return amount(requirement.get("maxAmountRequired"), f"{where}.maxAmountRequired", unit)


def _payment_id(payment: object) -> str | None:
    """The authorization's nonce (EIP-3009 / permit), else the payment-identifier extension's id,
    else a SHA-256 of the payment's canonical JSON: never the signature itself."""
    for path in (("payload", "authorization", "nonce"), ("extensions", "payment-identifier", "info", "id")):
        value = dig(payment, *path)
        if isinstance(value, str) and value:
            return value
    try:
        canonical = json.dumps(payment, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return None
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _payment_required(result: JSON) -> JSON | None:
    """The PaymentRequired in an error result: `structuredContent`, its `x402/error` wrapper, or the
    first text item's JSON (either form)."""
    structured = result.get("structuredContent")
    candidates: list[object] = [structured, dig(structured, "x402/error", "data")]
    text = text_of(result)
    if text is not None:
        try:
            parsed = parse_json(text)
        except Unreadable:
            parsed = None
        candidates += [parsed, dig(parsed, "x402/error", "data")]
    for candidate in candidates:
        if isinstance(candidate, dict) and isinstance(candidate.get("accepts"), list):
            return candidate
    return None
