"""What a BOLT11 invoice says: its amount (exact, in msat), its payment hash, and when it expires.

An invoice is secrets-adjacent (it carries the payment secret): no message raised here ever
contains it, and the decoder's own exceptions are not chained onto ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction

import bolt11

from ledgers import MAX_AMOUNT, Amount

# Longest invoice read (402-mcp accepts up to 20,000 characters; real ones are a few hundred).
MAX_INVOICE_CHARS = 20_000

# The human-readable part: `ln` + currency + optional amount with an optional multiplier.
_HRP = re.compile(r"^ln(?:bcrt|bc|tbs|tb)(?:(\d+)([munp]?))?$")
# msat per unit of amount, by multiplier (1 BTC = 10^11 msat).
_MSAT_PER = {
    "": Fraction(10**11),
    "m": Fraction(10**8),
    "u": Fraction(10**5),
    "n": Fraction(10**2),
    "p": Fraction(1, 10),
}
_HASH = re.compile(r"^[0-9a-f]{64}$")


class InvoiceError(ValueError):
    """An invoice that cannot be read. The message names the reason, never the invoice."""


@dataclass(frozen=True)
class Invoice:
    amount: Amount | None  # in msat; None for an amountless invoice
    payment_hash: str  # hex, lowercased
    expires: datetime | None  # its timestamp + expiry (3600 s unless it says); None when out of range


def read_invoice(invoice: str) -> Invoice:
    """What a BOLT11 invoice says.

    Raises `InvoiceError` for anything that is not a readable BOLT11 invoice with a payment hash.
    The amount comes from the human-readable part, exactly: a pico amount that is not a whole
    number of msat is refused, and so is an amount past 2^63-1 msat. An amount of zero reads as
    amountless (wallets treat `0` as "any amount").
    """
    if not isinstance(invoice, str):
        raise InvoiceError(f"the invoice is not a string but {type(invoice).__name__}")
    text = invoice.strip()
    if not text:
        raise InvoiceError("the invoice is empty")
    if len(text) > MAX_INVOICE_CHARS:
        raise InvoiceError(f"the invoice is longer than {MAX_INVOICE_CHARS} characters")
    lowered = text.lower()
    separator = lowered.rfind("1")
    match = _HRP.match(lowered[:separator]) if separator > 0 else None
    if match is None:
        raise InvoiceError("the invoice is not a BOLT11 invoice (no ln<currency><amount> prefix)")
    amount = _amount(match.group(1), match.group(2))
    try:
        # Validation (payment secret, description) is off: only the amount and the hash are needed,
        # and older L402 servers issue invoices without a payment secret. The checksum and the
        # signature are still checked.
        decoded = bolt11.decode(text, ignore_exceptions=True)
    except Exception:
        raise InvoiceError("the invoice cannot be decoded (bad checksum, signature or fields)") from None
    tag = decoded.tags.get(bolt11.TagChar.payment_hash)
    payment_hash = tag.data if tag is not None else None
    if not isinstance(payment_hash, str) or not _HASH.match(payment_hash.lower()):
        raise InvoiceError("the invoice has no payment hash")
    try:
        expires: datetime | None = datetime.fromtimestamp(decoded.expiry_time, UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        expires = None
    return Invoice(amount, payment_hash.lower(), expires)


def _amount(digits: str | None, multiplier: str | None) -> Amount | None:
    if digits is None:
        return None
    if len(digits) > 30:  # far past 2^63 msat whatever the multiplier
        raise InvoiceError("the invoice amount is too large")
    msat = int(digits) * _MSAT_PER[multiplier or ""]
    if msat.denominator != 1:
        raise InvoiceError("the invoice amount is not a whole number of millisatoshis")
    if msat > MAX_AMOUNT:
        raise InvoiceError("the invoice amount is too large")
    if msat == 0:
        return None
    return Amount(int(msat), "msat")
