"""402-mcp (L402/x402 client MCP server): what its calls spend and what its answers say.

Facts from 402-mcp v4.2.1 (see the project's UPSTREAMS notes, section 1). Every answer is one text
content item holding pretty-printed JSON; errors are JSON text with `isError: true`. Answers are read
defensively: anything that is not as documented never raises, it sets `Outcome.problem` (a short
description, never a secret or an upstream value) and picks the safe state: a paying call whose
outcome cannot be read is `unknown` (the money may have left), never `not_paid`.

Units: sats leave the wallet only when something is bought (`satsPaid`, `amountSats`, an invoice's
amount, a Cashu token's value). Per-origin credits are the paid server's own units, observed under
`credits:<origin>` in the unit `credits:<origin>`, and never mixed with sats.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from guard.core import JSON
from guard.names import known
from guard.payments.adapters._bolt11 import InvoiceError, read_invoice
from guard.payments.adapters._facts import Outcome, OutcomeState, Prepared, Quote, Refresh
from ledgers import MAX_AMOUNT, Amount, BalanceObservation

NAME = "402-mcp"

# All of 402-mcp's tools (v4.2.1, widgets on), in their kebab-case names.
PAYING_TOOLS = frozenset({"l402-fetch", "l402-pay", "l402-buy-credits", "l402-redeem-cashu"})
READING_TOOLS = frozenset(
    {
        "l402-balance",
        "l402-credentials",
        "l402-config",
        "l402-fetch-preview",
        "l402-discover",
        "l402-search",
        "l402-store-token",
        # Served only when 402-mcp's widgets are on (captures widgets-01): a host's UI, no payment.
        "l402-service-directory",
        "l402-wallet-dashboard",
    }
)
TOOLS = PAYING_TOOLS | READING_TOOLS

# No amount of sats can be more than all bitcoin: 21 million BTC of 10^8 sat.
MAX_SATS = 21_000_000 * 100_000_000

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HASH = re.compile(r"^[0-9a-fA-F]{64}$")
_DIGITS = re.compile(r"^\s*(\d{1,30})\s*$")
_NO_CREDENTIALS = "No stored credentials for"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def origin_of(url: object) -> str | None:
    """`scheme://host[:port]` of an http(s) URL, scheme and host lowercased, default ports dropped,
    as a browser's `URL.origin` writes it; None when `url` is not such a URL."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lowercased, without credentials or IPv6 brackets
    if scheme not in _DEFAULT_PORTS or not host or re.search(r"[\s/\\]", host):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def credits_key(origin: str) -> str:
    """The observation key (and unit) of an origin's credits."""
    return f"credits:{origin}"


def payment_hash(value: object) -> str | None:
    """A payment hash (64 hex digits, lowercased), or None when `value` is not one."""
    if isinstance(value, str) and _HASH.match(value.strip()):
        return value.strip().lower()
    return None


def read_count(value: object, limit: int = MAX_AMOUNT) -> tuple[int | None, str | None]:
    """A whole number in 0..limit from a JSON value, and a note when it is not as documented.

    `(n, None)`: an integer; `(n, note)`: readable but written oddly (a string "21", a decimal 21.0);
    `(None, note)`: unreadable (a fraction, negative, too large, not a number). The note names no value.
    """
    if isinstance(value, bool):
        return None, "is not a number"
    note = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float | Decimal):
        exact = Decimal(value)
        if not exact.is_finite():
            return None, "is not a finite number"
        if exact.adjusted() > 30:
            return None, "is too large"
        if exact != exact.to_integral_value():
            return None, "is not a whole number"
        number, note = int(exact), "is written as a decimal"
    elif isinstance(value, str):
        digits = _DIGITS.match(value)
        if digits is None:
            return None, "is not a number"
        number, note = int(digits.group(1)), "is a string"
    else:
        return None, "is not a number"
    if number < 0:
        return None, "is negative"
    if number > limit:
        return None, "is too large"
    return number, note


@dataclass
class Reading:
    """A tool result, read: its JSON (None when it has none), whether it is an error, its text."""

    data: Any
    error: bool
    text: str | None
    problems: list[str] = field(default_factory=list)

    def count(self, data: JSON, name: str, limit: int = MAX_AMOUNT) -> int | None:
        """`data[name]` as a whole number (None when null, missing or unreadable; noted if odd)."""
        value = data.get(name)
        if value is None:
            return None
        number, note = read_count(value, limit)
        if note is not None:
            self.problems.append(f"{name} {note}")
        return number

    def problem(self) -> str | None:
        return "; ".join(dict.fromkeys(self.problems)) or None


def read_result(result: object) -> Reading:
    """Read an MCP tool result: the first text content item, parsed as JSON when it is JSON.

    Numbers with a fraction parse as `Decimal` (never floats); NaN and Infinity make the text unreadable.
    A text that is a QR code followed by a blank line and JSON (402-mcp's human-wallet answers) reads
    as that JSON."""
    if not isinstance(result, dict):
        return Reading(None, False, None, ["the result is not an object"])
    error = result.get("isError") not in (None, False)
    text = None
    content = result.get("content")
    if isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
                text = item["text"]
                break
    if text is None:
        return Reading(None, error, None, ["the result has no text content"])
    for candidate in (text, text[text.find("\n\n{") + 2 :] if "\n\n{" in text else None):
        if candidate is None:
            continue
        try:
            return Reading(json.loads(candidate, parse_float=Decimal, parse_constant=_no_constant), error, text)
        except (ValueError, RecursionError):
            continue
    return Reading(None, error, text, ["the result text is not JSON"])


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_time(value: object, name: str, problems: list[str]) -> datetime | None:
    """An ISO-8601 time with a zone, as an aware UTC datetime (None, noted, when it is not one)."""
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{name} is not a time")
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        problems.append(f"{name} is not an ISO-8601 time")
        return None
    if when.tzinfo is None:
        problems.append(f"{name} has no time zone")
        return None
    return when.astimezone(UTC)


class L402Mcp:
    """The adapter for 402-mcp. Tool names match in kebab and snake case."""

    name = NAME

    tools = TOOLS

    def knows(self, tool: str) -> bool:
        return known(tool, TOOLS) is not None

    def prepare(self, tool: str, arguments: JSON, meta: JSON | None) -> Prepared:
        name = self._tool(tool)
        args = arguments if isinstance(arguments, dict) else {}
        if name == "l402-fetch":
            if not _auto_pays(args):
                return Prepared(pays=False)
            # No balance gates it: an origin's credits are spent first, and when they are exhausted the
            # fetch buys more with sats, which the budgets count. (l402-balance only reads a cache.)
            # The price is in the invoice the fetch will meet: with no live quote, a preview names it.
            url = _primary_url(args)
            return Prepared(pays=True, quote_for=url, quote_with=_preview_of(url, args, snake="_" in tool))
        if name == "l402-pay":
            return _prepare_pay(args)
        if name == "l402-buy-credits":
            if args.get("amountSats") is None:
                return Prepared(pays=False)  # lists the tiers
            sats = _asked_sats(args.get("amountSats"))
            if sats is None:
                return Prepared(
                    pays=True,
                    refuse=f"l402-buy-credits: amountSats must be a whole number of sats from 1 to {MAX_SATS}",
                )
            return Prepared(pays=True, price=Amount(sats, "sat"))
        if name == "l402-redeem-cashu":
            return Prepared(pays=True)  # the token's value is not decoded: the policy's max_price bounds it
        return Prepared(pays=False)

    def outcome(self, tool: str, arguments: JSON, meta: JSON | None, result: JSON) -> Outcome:
        name = self._tool(tool)
        args = arguments if isinstance(arguments, dict) else {}
        reading = read_result(result)
        if name == "l402-fetch":
            return _fetch_outcome(args, reading)
        if name == "l402-pay":
            return _pay_outcome(args, reading)
        if name == "l402-buy-credits":
            return _buy_credits_outcome(args, reading)
        if name == "l402-redeem-cashu":
            return _redeem_outcome(reading)
        if name == "l402-balance":
            return _balance_outcome(args, reading)
        if name == "l402-credentials":
            return _credentials_outcome(reading)
        if name in ("l402-fetch-preview", "l402-discover"):
            return _preview_outcome(name, args, reading)
        return Outcome("no_payment")

    def refresh(self, key: str) -> Refresh | None:
        if key.startswith("credits:") and len(key) > len("credits:"):
            return Refresh("l402-balance", {"origin": key.removeprefix("credits:")})
        return None

    def _tool(self, tool: str) -> str:
        name = known(tool, TOOLS)  # 402-mcp renamed its tools from snake to kebab case in v3.14
        if name is None:
            raise ValueError(f"{NAME} does not know the tool {tool!r}")
        return name


# --- prepare ---------------------------------------------------------------------------------


def _auto_pays(args: JSON) -> bool:
    """`l402-fetch` pays only with autoPay. Anything but absent/null/false counts as on: a value the
    upstream might coerce to true must not slip past the budget as a free call."""
    return args.get("autoPay") not in (None, False)


def _primary_url(args: JSON) -> str | None:
    """The URL a fetch is for: the first of `urls` when given (402-mcp's transport alternatives), else `url`."""
    urls = args.get("urls")
    if isinstance(urls, list) and urls and isinstance(urls[0], str):
        return urls[0]
    url = args.get("url")
    return url if isinstance(url, str) else None


def _preview_of(url: str | None, args: JSON, *, snake: bool) -> Refresh | None:
    """`l402-fetch-preview` of the URL a fetch pays for (with its method: a price may depend on it), named
    in the case style the fetch was (a 402-mcp before v3.14 knows only `l402_fetch_preview`)."""
    if url is None:
        return None
    method = args.get("method")
    tool = "l402_fetch_preview" if snake else "l402-fetch-preview"
    return Refresh(tool, {"url": url} | ({"method": method} if isinstance(method, str) else {}))


def _asked_sats(value: object) -> int | None:
    """`amountSats` from a call: a whole number 1..MAX_SATS (a string, a fraction, a bool: None)."""
    if isinstance(value, str):
        return None
    sats, _ = read_count(value, MAX_SATS)
    return sats if sats else None


def _prepare_pay(args: JSON) -> Prepared:
    invoice = args.get("invoice")
    if invoice is None or invoice == "":
        # 402-mcp pays the invoice it cached for `paymentHash`: the price is not in the call.
        return Prepared(pays=True, payment_id=payment_hash(args.get("paymentHash")))
    try:
        read = read_invoice(invoice)
    except InvoiceError as error:
        return Prepared(pays=True, refuse=f"l402-pay: {error}")
    return Prepared(pays=True, price=read.amount, payment_id=read.payment_hash)


def _invoice_of(args: JSON) -> tuple[Amount | None, str | None]:
    """The amount and payment hash of the call's invoice (the hash argument when there is no invoice)."""
    invoice = args.get("invoice")
    if isinstance(invoice, str) and invoice:
        try:
            read = read_invoice(invoice)
        except InvoiceError:
            return None, None
        return read.amount, read.payment_hash
    return None, payment_hash(args.get("paymentHash"))


# --- outcome ---------------------------------------------------------------------------------


def _fail_state(pays: bool) -> OutcomeState:
    """What an answer that proves nothing was paid means for this call."""
    return "not_paid" if pays else "no_payment"


def _unreadable(pays: bool, reading: Reading, payment_id: str | None = None) -> Outcome:
    """An answer that does not say what happened. For a paying call: an answer that cannot be read at
    all (not JSON, not an object) counts as paid at the reservation (settled, flagged: no human needed
    to release it); a failure, or an object in no documented shape, is unknown (kept in doubt)."""
    if reading.data is not None and not isinstance(reading.data, dict):
        reading.problems.append("the result is not a JSON object")
    elif isinstance(reading.data, dict) and reading.error:
        reading.problems.append("the call failed without saying whether it paid" if pays else "the call failed")
    elif isinstance(reading.data, dict):
        reading.problems.append("the result is not in a documented shape")
    if not pays:
        return Outcome("no_payment", payment_id=payment_id, problem=reading.problem())
    unreadable = not reading.error and not isinstance(reading.data, dict)
    return Outcome("paid" if unreadable else "unknown", payment_id=payment_id, problem=reading.problem())


def _quote(resource: str | None, data: JSON, reading: Reading) -> Quote | None:
    """The price a 402 answer, a preview or a discover names: the invoice's amount when it carries a
    readable one (exact), else `costSats`; `costUsd` alone makes no quote. It is for the resource and,
    when the answer names one, for the payment hash (402-mcp caches that challenge: a later `l402-pay
    {paymentHash}` pays exactly it). It expires with the invoice (its timestamp + expiry) or at
    `expiresAt` (a preview's, epoch ms), whichever comes first."""
    amount = None
    hash_ = payment_hash(data.get("paymentHash"))
    expiries = [_epoch_ms(data.get("expiresAt"), "expiresAt", reading.problems)]
    invoice = data.get("invoice")
    if isinstance(invoice, str) and invoice:
        try:
            read = read_invoice(invoice)
        except InvoiceError:
            reading.problems.append("the invoice in the result cannot be read")
        else:
            if hash_ is not None and hash_ != read.payment_hash:
                reading.problems.append("paymentHash differs from the invoice's")
            amount, hash_ = read.amount, read.payment_hash
            expiries.append(read.expires)
    if amount is None:
        sats = reading.count(data, "costSats", MAX_SATS)
        if sats is not None:
            amount = Amount(sats, "sat")
    expires = min((e for e in expiries if e is not None), default=None)
    if amount is None or (resource is None and hash_ is None):
        return None
    return Quote(resource, amount, hash_, expires)


def _epoch_ms(value: object, name: str, problems: list[str]) -> datetime | None:
    """Epoch milliseconds (as JavaScript's `Date.now()` counts) as an aware UTC datetime; None, noted,
    when it is not a whole number of milliseconds in range."""
    if value is None:
        return None
    ms, note = read_count(value)
    if ms is None or note is not None:
        problems.append(f"{name} is not a time in epoch milliseconds")
        return None
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        problems.append(f"{name} is out of range")
        return None


def _fetch_outcome(args: JSON, reading: Reading) -> Outcome:
    pays = _auto_pays(args)
    url = _primary_url(args)
    origin = origin_of(url)
    data = reading.data
    if not isinstance(data, dict):
        return _unreadable(pays, reading)
    hash_ = payment_hash(data.get("paymentHash"))
    state = data.get("paymentState")
    if state is not None:
        quote = _quote(url, data, reading)
        quotes = (quote,) if quote else ()
        hash_ = hash_ or (quote.payment_id if quote else None)
        if state == "unknown":
            return Outcome("unknown", quotes=quotes, payment_id=hash_, problem=reading.problem())
        if state in ("failed", "blocked"):  # 402-mcp: "no money moved" / paused before paying
            return Outcome(_fail_state(pays), quotes=quotes, payment_id=hash_, problem=reading.problem())
        reading.problems.append("paymentState is not one of paid, failed, unknown")
        return Outcome("unknown" if pays else "no_payment", payment_id=hash_, problem=reading.problem())
    status = reading.count(data, "status", 999)
    if status == 402:
        if data.get("protocol") == "x402":
            # Never auto-paid; priced in USD, which is no sat quote.
            return Outcome(_fail_state(pays), problem=reading.problem())
        quote = _quote(url, data, reading)
        observations: tuple[BalanceObservation, ...] = ()
        if data.get("creditsExhausted") is True and origin:
            observations = (
                BalanceObservation(
                    "l402-fetch", credits_key(origin), Amount(0, credits_key(origin)), status="exhausted"
                ),
            )
        return Outcome(
            _fail_state(pays),
            observations=observations,
            quotes=(quote,) if quote else (),
            payment_id=quote.payment_id if quote else hash_,
            problem=reading.problem(),
        )
    if status is None:
        return _unreadable(pays, reading)
    # The resource answered (paid now, a credential reused, or free).
    observations = _fetch_credits(origin, data, reading)
    paid = data.get("satsPaid")
    sats = reading.count(data, "satsPaid", MAX_SATS)
    if sats is None:
        reading.problems.append("satsPaid is missing" if paid is None else "satsPaid cannot be read")
        return Outcome("unknown" if pays else "no_payment", observations=observations, problem=reading.problem())
    if not pays and sats == 0:
        return Outcome("no_payment", observations=observations, problem=reading.problem())
    if not pays:
        reading.problems.append("satsPaid is not zero although autoPay was off")
    return Outcome("paid", spent=Amount(sats, "sat"), observations=observations, problem=reading.problem())


def _fetch_credits(origin: str | None, data: JSON, reading: Reading) -> tuple[BalanceObservation, ...]:
    """`creditsRemaining` (the server's `X-Credit-Balance`, just now): null is no observation."""
    if origin is None or data.get("creditsRemaining") is None:
        return ()
    credits = reading.count(data, "creditsRemaining")
    if credits is None:
        return ()
    key = credits_key(origin)
    return (BalanceObservation("l402-fetch", key, Amount(credits, key), upstream_stale=False),)


def _pay_outcome(args: JSON, reading: Reading) -> Outcome:
    amount, hash_ = _invoice_of(args)
    data = reading.data
    if not isinstance(data, dict):
        return _unreadable(True, reading, hash_)
    hash_ = hash_ or payment_hash(data.get("paymentHash"))
    state, paid = data.get("paymentState"), data.get("paid")
    if state == "paid" or (state is None and paid is True):
        if paid is False:
            reading.problems.append("paid and paymentState disagree")
            return Outcome("unknown", payment_id=hash_, problem=reading.problem())
        if amount is None and args.get("invoice") not in (None, ""):
            # An amountless invoice. (Paid by `paymentHash` alone, 402-mcp never names the amount: the hold's
            # price, a quote for that hash or else the policy's cap, is what the ledger counts.)
            reading.problems.append("amount unknown")
        return Outcome("paid", spent=amount, payment_id=hash_, problem=reading.problem())
    if _refused_before_paying(data):
        return Outcome("not_paid", payment_id=hash_, problem=reading.problem())
    if state in ("failed", "blocked"):
        if paid is True:
            reading.problems.append("paid and paymentState disagree")
            return Outcome("unknown", payment_id=hash_, problem=reading.problem())
        return Outcome("not_paid", payment_id=hash_, problem=reading.problem())
    if state == "unknown":
        return Outcome("unknown", payment_id=hash_, problem=reading.problem())
    if state is None and paid is False:
        # Unknown is not failed: without a paymentState, `paid: false` does not prove nothing left.
        reading.problems.append("paid is false but paymentState is not reported")
        return Outcome("unknown", payment_id=hash_, problem=reading.problem())
    if state is not None:
        reading.problems.append("paymentState is not one of paid, failed, unknown")
        return Outcome("unknown", payment_id=hash_, problem=reading.problem())
    return _unreadable(True, reading, hash_)


def _refused_before_paying(data: JSON) -> bool:
    """`{"paid": false, "reason": "…"}` and nothing else: how 402-mcp 4.2.1 answers when it stops before its
    wallet is called (no invoice or macaroon cached for the hash, no wallet, an amountless invoice, over
    MAX_AUTO_PAY_SATS, the per-minute spend limit) or after the wallet said it did not pay ("Payment
    failed"). Every answer given once money may have moved names a `paymentState`."""
    return set(data) == {"paid", "reason"} and data["paid"] is False and isinstance(data["reason"], str)


# The texts of l402-buy-credits' `{"error": …}` refusals made before its wallet is called (402-mcp 4.2.1):
# nothing was paid. Any other error text may come from a wallet that threw mid-payment: in doubt.
_BUY_REFUSALS = re.compile(
    r"^(?:Amount \d+ sats exceeds per-request limit|Per-minute spend limit reached|Failed to create invoice"
    r"|Invalid server response|Server returned an amountless invoice|Invoice amount \(\d+ sats\) does not match"
    r"|Payment to this service is paused)"
)


def _buy_credits_outcome(args: JSON, reading: Reading) -> Outcome:
    pays = args.get("amountSats") is not None
    data = reading.data
    if not pays:
        if not isinstance(data, dict) or ("tiers" not in data and not reading.error):
            return _unreadable(False, reading)
        return Outcome("no_payment", problem=reading.problem())
    asked = _asked_sats(args.get("amountSats"))
    if not isinstance(data, dict):
        return _unreadable(True, reading)
    hash_ = payment_hash(data.get("paymentHash"))
    state, paid = data.get("paymentState"), data.get("paid")
    if paid is True and state in (None, "paid"):
        sats = reading.count(data, "amountSats", MAX_SATS)
        if sats is None:
            if asked is None:
                reading.problems.append("amountSats is not reported")
                return Outcome("paid", payment_id=hash_, problem=reading.problem())
            reading.problems.append("amountSats is not reported: the amount asked for is counted")
            sats = asked
        elif asked is not None and sats != asked:
            reading.problems.append("amountSats differs from the amount asked for")
        return Outcome("paid", spent=Amount(sats, "sat"), payment_id=hash_, problem=reading.problem())
    if state == "unknown":
        return Outcome("unknown", payment_id=hash_, problem=reading.problem())
    if state in ("failed", "blocked") and paid is not True:
        return Outcome("not_paid", payment_id=hash_, problem=reading.problem())
    if paid is None and state is None and "tiers" in data:
        return Outcome("not_paid", problem=reading.problem())  # tiers listed: nothing was bought
    if paid is False and state is None and "invoice" in data and not reading.error:
        # A human wallet's invoice handed back to pay by hand (then `l402-pay {paymentHash}`): not paid yet;
        # its price is remembered by its hash.
        quote = _quote(None, data, reading)
        return Outcome(
            "not_paid",
            quotes=(quote,) if quote else (),
            payment_id=hash_ or (quote.payment_id if quote else None),
            problem=reading.problem(),
        )
    if _refused_before_paying(data) or _buy_refused(data):
        return Outcome("not_paid", payment_id=hash_, problem=reading.problem())
    return _unreadable(True, reading, hash_)


def _buy_refused(data: JSON) -> bool:
    """An `{"error": …}` answer of l402-buy-credits that 402-mcp gives only before paying."""
    error = data.get("error")
    return set(data) == {"error"} and isinstance(error, str) and _BUY_REFUSALS.match(error) is not None


def _redeem_outcome(reading: Reading) -> Outcome:
    data = reading.data
    if isinstance(data, dict) and data.get("redeemed") is True:
        return Outcome("paid", spent=None, problem=reading.problem())  # the token's value is not echoed
    return _unreadable(True, reading)


def _balance_outcome(args: JSON, reading: Reading) -> Outcome:
    data = reading.data
    asked = origin_of(args.get("origin"))
    if not isinstance(data, dict):
        return _unreadable(False, reading)
    error = data.get("error")
    if isinstance(error, str) and error.startswith(_NO_CREDENTIALS):
        origin = asked or origin_of(error.removeprefix(_NO_CREDENTIALS))
        if origin is None:
            reading.problems.append("the origin cannot be read")
            return Outcome("no_payment", problem=reading.problem())
        observation = BalanceObservation("l402-balance", credits_key(origin), None, status="no-credentials")
        return Outcome("no_payment", observations=(observation,), problem=reading.problem())
    if "creditsRemaining" not in data:
        return _unreadable(False, reading)
    origin = origin_of(data.get("origin")) or asked
    if origin is None:
        reading.problems.append("the origin cannot be read")
        return Outcome("no_payment", problem=reading.problem())
    key = credits_key(origin)
    credits = reading.count(data, "creditsRemaining")
    stale = data.get("stale")
    if stale is not None and not isinstance(stale, bool):
        reading.problems.append("stale is not a boolean")
        stale = None
    observation = BalanceObservation(
        "l402-balance",
        key,
        Amount(credits, key) if credits is not None else None,
        upstream_time=read_time(data.get("lastUpdated"), "lastUpdated", reading.problems),
        upstream_stale=stale,
    )
    return Outcome("no_payment", observations=(observation,), problem=reading.problem())


def _credentials_outcome(reading: Reading) -> Outcome:
    """One observation per origin; of several credentials for one origin, the last used counts."""
    data = reading.data
    if not isinstance(data, dict) or not isinstance(data.get("credentials"), list):
        return _unreadable(False, reading)
    seen: dict[str, BalanceObservation] = {}
    paid: list[str] = []
    for entry in data["credentials"]:
        if not isinstance(entry, dict):
            reading.problems.append("a credential is not an object")
            continue
        proven = payment_hash(entry.get("paymentHash"))
        if proven is not None and proven not in paid:
            paid.append(proven)  # a credential is stored only once its invoice is paid
        origin = origin_of(entry.get("origin"))
        if origin is None:
            continue  # keyed by a service pubkey, not an origin
        key = credits_key(origin)
        credits = reading.count(entry, "creditBalance")
        observation = BalanceObservation(
            "l402-credentials",
            key,
            Amount(credits, key) if credits is not None else None,
            upstream_time=read_time(entry.get("lastUsed"), "lastUsed", reading.problems),
        )
        earlier = seen.get(key)
        if earlier is None or _later_or_same(observation.upstream_time, earlier.upstream_time):
            seen[key] = observation
    return Outcome("no_payment", observations=tuple(seen.values()), proven_paid=tuple(paid), problem=reading.problem())


def _later_or_same(new: datetime | None, old: datetime | None) -> bool:
    if new is None or old is None:
        return old is None
    return new >= old


def _preview_outcome(name: str, args: JSON, reading: Reading) -> Outcome:
    """A preview or a discover names a price without paying: remember it as a quote."""
    data = reading.data
    url = args.get("url") if isinstance(args.get("url"), str) else None
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) for item in items):
        return _unreadable(False, reading)
    quotes = []
    for item in items:
        if item.get("status") in ("free", "error") or "error" in item:
            continue
        if name == "l402-fetch-preview":
            endpoint = item.get("endpoint")
            resource = endpoint if isinstance(endpoint, str) else url
        else:
            resource = url or (item["url"] if isinstance(item.get("url"), str) else None)
        quote = _quote(resource, item, reading)
        if quote is not None:
            quotes.append(quote)
    return Outcome("no_payment", quotes=tuple(quotes), problem=reading.problem())
