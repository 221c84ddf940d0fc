"""Scrub secrets from text the guard did not write itself (an upstream's stderr) before it is shown.

Macaroons, preimages, invoices, NWC URIs, Cashu tokens, x402 signatures, bearer tokens and API keys
must never reach logs, errors or reports.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"

_PATTERNS = [
    re.compile(r"nostr\+walletconnect://\S+", re.IGNORECASE),
    re.compile(r"\b(?:L402|LSAT|Bearer|Basic)\s+[^\s,;\"']+", re.IGNORECASE),
    re.compile(r"\b(?:X-PAYMENT(?:-RESPONSE)?|PAYMENT-SIGNATURE|PAYMENT-RESPONSE)\s*:\s*\S+", re.IGNORECASE),
    re.compile(
        r"\b(?:macaroon|preimage|invoice|signature|secret|password|passwd|token|api[_-]?key)\b"
        r"[\"']?\s*[:=]\s*[\"']?[^\s,;\"'}]+",
        re.IGNORECASE,
    ),
    re.compile(r"\bln(?:bc|tb|bcrt|tbs)[0-9]*[munp]?1[02-9ac-hj-np-z]{20,}\b", re.IGNORECASE),
    re.compile(r"\b[A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|URI|MACAROON)=\S+"),
    re.compile(r"\bcashu[AB][A-Za-z0-9_\-+/=]{10,}"),
    re.compile(r"\b(?:0x)?[0-9a-fA-F]{64,}\b"),
    re.compile(r"\b(?:sk|pk|rk)[-_](?:live|test)?[-_]?[A-Za-z0-9]{16,}\b"),
]

# A long run of base64/base64url characters is a secret (a macaroon, a signature) unless it is a
# file path: a run with `/` in it counts only when it also looks random (upper, lower and digits).
_LONG_RUN = re.compile(r"\b[A-Za-z0-9+/_-]{40,}={0,2}")


def _long_run(match: re.Match[str]) -> str:
    run = match.group(0)
    if "/" in run and not (re.search(r"[A-Z]", run) and re.search(r"[a-z]", run) and re.search(r"[0-9]", run)):
        return run
    return REDACTED


def redact(text: str) -> str:
    """Return `text` with anything that looks like a secret replaced by `[redacted]`."""
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return _LONG_RUN.sub(_long_run, text)
