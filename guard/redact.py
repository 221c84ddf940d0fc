"""Scrub secrets from text before guard shows it: every log record (the SDK's and the HTTP stack's
included, see guard/cli/logs.py), errors, an upstream's stderr and command line, URLs kept for reports.

Macaroons, preimages, invoices, NWC URIs, Cashu tokens, x402 signatures, bearer tokens, passwords and
API keys are secrets. What is redacted:

- the value under a sensitive name, whatever its length: a JSON / Python / header / query / env / kwarg
  name that contains auth, token, key, secret, password, passwd, pwd, sig(nature), macaroon, preimage,
  payment, invoice, bearer, cookie, session, credential or nwc (`"x-custom-auth": "ab12"`,
  `X-Api-Key: short`, `?api_key=…`, `P402_API_KEY=…`). After `name: ` a common word is kept
  (`pay_invoice: the invoice is missing`), and in JSON a number, `true`, `false` or `null` is kept;
- a keyword then its value in prose (`macaroon XYZ`, `the preimage 7f3c…`), unless the next word is
  plain (letters only, lower case or capitalised: `the invoice is missing`, `token budget`);
- by shape: auth schemes (`Bearer …`, `L402 …`), NWC URIs, BOLT11 invoices, Cashu tokens, JWTs,
  known key prefixes (sk_/pk_/rk_, sk-, ghp_, github_pat_, xox?-, AKIA, AIza, glpat-), long random
  runs (base64 macaroons, hex signatures);
- in a URL: its user info (`https://user:pass@host`) and secret-looking path segments (`secret_segment`).

Not secrets (kept, so logs stay useful): amounts, tool names, ISO times, ordinary URLs and paths, session
ids, EVM addresses (0x + 40 hex) and 64-hex payment hashes (public in L402: the invoice carries one; a
preimage has the same shape, so it is caught by its name or keyword, or inside an `L402` header).
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any
from urllib.parse import unquote

REDACTED = "[redacted]"

_WORDS = (
    r"auth|token|key|secret|passw(?:or)?d|pwd|sig|macaroon|preimage|payment|invoice|bearer|cookie|session|"
    r"credential|nwc"
)
# A name (JSON key, header, query parameter, env variable, kwarg) of at most 80 characters that contains a
# sensitive word. Bounded and possessive, so a long word costs a few steps and hostile text cannot make
# it backtrack; `[abcikmnpst]` (the words' first letters) is a cheap test before trying each word.
_NAME = rf"(?<![\w.-])(?P<name>(?=[\w.-]{{0,40}}?(?=[abcikmnpst])(?:{_WORDS}))[\w.-]{{1,80}}+)(?![\w.-])"
# Names of public things that happen to contain a sensitive word.
_PUBLIC_NAME = re.compile(r"payment[_-]?hash(?:es)?$|^(?:author|progress_?token)$", re.IGNORECASE)
# Auth schemes after a header name (`Authorization: Token …`; in prose, Bearer/L402/LSAT are keywords).
_HEADER_SCHEME = r"(?:Bearer|Basic|Digest|Token|L402|LSAT)"
# An unquoted value: optionally an auth scheme, then a run up to a delimiter.
_BARE = rf"(?:{_HEADER_SCHEME}\s+)?(?!{_HEADER_SCHEME}\s)[^\s\"'`,;&<>()\[\]{{}}\\]+"
# A quoted value: up to the same quote (JSON inside JSON escapes its quotes: `\"`).
_QUOTED = r"(?P<q>\\*[\"'])(?:(?!(?P=q)).)*(?P=q)"

# Redacted whatever the value: `"name": "…"` / `'name': '…'`; `name=…`; `name: …` (header or label).
_QUOTED_NAME = re.compile(
    rf"(?P<lead>(?P<nq>\\*[\"']){_NAME}(?P=nq)\s*:\s*)"
    rf"(?P<value>{_QUOTED}|(?!-?\d|(?:true|false|null|none)\b){_BARE})",  # JSON numbers and literals are kept
    re.IGNORECASE,
)
_ASSIGNED = re.compile(rf"(?P<lead>{_NAME}\s*=\s*)(?P<value>{_QUOTED}|{_BARE})", re.IGNORECASE)
_LABELLED = re.compile(rf"(?P<lead>{_NAME}:\s+)(?P<value>{_QUOTED}|{_BARE})", re.IGNORECASE)
# After `name: `, these words are prose, not a value.
_COMMON = frozenset(
    "a an and are at be by can cannot for from has have in is missing must no none not null of on or set the to"
    " too unknown was were with".split()
)
# A keyword (or an auth scheme), a space, a value: `macaroon XYZ`, `api key 1234`, `L402 mac:preimage`.
_KEYWORDS = (
    r"macaroon|preimage|invoice|token|secret|password|signature|api[ _-]?key|bearer|l402|lsat|nwc|authorization|"
    r"x-payment|payment-signature|cookie"
)
_PROSE = re.compile(
    rf"(?P<lead>\b(?=[abcilmnpstx])(?:{_KEYWORDS})s?\s+)(?P<value>{_QUOTED}|[^\s\"'`,;&<>()\[\]{{}}\\]+)",
    re.IGNORECASE,
)
_PLAIN_WORD = re.compile(r"[A-Za-z][a-z]{0,14}\.?")

_SHAPES = [
    re.compile(r"nostr\+walletconnect://[^\s\"'`<>]+", re.IGNORECASE),
    re.compile(r"\bBasic\s+[A-Za-z0-9+/]{8,}={0,2}"),
    re.compile(r"\bln(?:bc|tb|bcrt|tbs)[0-9]*[munp]?1[02-9ac-hj-np-z]{20,}\b", re.IGNORECASE),
    re.compile(r"\bcashu[AB][A-Za-z0-9_\-+/=]{10,}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),  # a JWT
    re.compile(
        r"\b(?:(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{4,}"
        r"|(?:sk|pk|rk)[-_](?=[A-Za-z0-9_-]{0,64}\d)[A-Za-z0-9_-]{10,}"
        r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|xox[abposr]-[A-Za-z0-9-]{10,}"
        r"|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}|glpat-[0-9A-Za-z_-]{20,})"
    ),
]
# A long run of base64/base64url/hex characters (a macaroon, a signature) is a secret when it looks
# random (`_random`); a file path or a slug does not.
_LONG_RUN = re.compile(r"\b[A-Za-z0-9+/_-]{40,}={0,2}")
_PUBLIC_HEX = re.compile(r"(?:0x)?[0-9a-fA-F]{64}|0x[0-9a-fA-F]{40}")
_URL = re.compile(
    r"\b(?P<origin>[a-z][a-z0-9+.-]{0,30}://[^/?#\s\"'`<>]*)(?P<path>[^?#\s\"'`<>]*)(?P<rest>[^\s\"'`<>]*)",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"(?<=://)[^@]*@")
_HEX_ID = re.compile(r"(?:0x)?[0-9a-fA-F]{32,}")


def redact(text: str) -> str:
    """Return `text` with anything that looks like a secret replaced by `[redacted]`."""
    return _scrub(_URL.sub(_url, text))


def redact_arguments(value: Any) -> Any:
    """A call's arguments (JSON) with secrets removed and their shape kept, for the audit trail: whatever is
    under a sensitive name (`macaroon`, `api_key`, `authorization`, `nwc_url`...) is replaced whole, numbers,
    booleans and null excepted; every other string is redacted as text (`redact`: invoices, keys, NWC URIs,
    URLs' secrets by shape); names that look like secrets themselves are redacted too."""
    if isinstance(value, dict):
        return {redact(str(name)): _redact_named(str(name), item) for name, item in value.items()}
    if isinstance(value, list):
        return [redact_arguments(item) for item in value]
    if isinstance(value, str):
        return redact(value)
    return value


def _redact_named(name: str, value: Any) -> Any:
    sensitive = _SENSITIVE_WORD.search(name) is not None and _PUBLIC_NAME.search(name) is None
    if sensitive and not (value is None or isinstance(value, bool | int | float)):
        return REDACTED
    return redact_arguments(value)


_SENSITIVE_WORD = re.compile(_WORDS, re.IGNORECASE)


def secret_segment(segment: str) -> bool:
    """Whether a URL path segment looks like a secret: a token shape (key prefix, JWT, invoice…), hex of
    32+ digits, a random run of 16+ characters, or `name=value` under a sensitive name. Ordinary segments
    (`v1`, `completions`, `paris`, `2026-11-21`, `item-42`) are not."""
    text = unquote(segment)
    compact = re.sub(r"[-_.~]", "", text)
    return (
        _scrub(text) != text
        or bool(_HEX_ID.fullmatch(compact))
        or (len(compact) >= 16 and compact.isalnum() and _random(compact))
    )


def _scrub(text: str) -> str:
    for pattern in _SHAPES:
        text = pattern.sub(REDACTED, text)
    text = _QUOTED_NAME.sub(_named, text)
    text = _ASSIGNED.sub(_named, text)
    text = _LABELLED.sub(_labelled, text)
    text = _PROSE.sub(_prose, text)
    return _LONG_RUN.sub(_long_run, text)


def _named(match: re.Match[str]) -> str:
    if _PUBLIC_NAME.search(match.group("name")) or match.group("value").strip("\\\"'") == REDACTED:
        return match.group(0)
    quote = match.group("q") or ""
    return f"{match.group('lead')}{quote}{REDACTED}{quote}"


def _labelled(match: re.Match[str]) -> str:
    if match.group("value").lower() in _COMMON:
        return match.group(0)
    return _named(match)


def _prose(match: re.Match[str]) -> str:
    value = match.group("value")
    if _PLAIN_WORD.fullmatch(value) or value.strip("\\\"'") == REDACTED:
        return match.group(0)
    quote = match.group("q") or ""
    return f"{match.group('lead')}{quote}{REDACTED}{quote}"


def _long_run(match: re.Match[str]) -> str:
    run = match.group(0)
    return REDACTED if not _PUBLIC_HEX.fullmatch(run) and _random(run[:200]) else run


def _random(run: str) -> bool:
    """Letters and digits interleaved (base64, hex, API keys), or long and of mixed case (a macaroon
    without digits); not words, slugs, paths or CamelCase names."""
    switches = sum(a.isdigit() != b.isdigit() for a, b in pairwise(run) if a.isalnum() and b.isalnum())
    if switches >= max(4, len(run) // 10):
        return True
    return len(run) >= 60 and "/" not in run and any(c.isupper() for c in run) and any(c.islower() for c in run)


def _url(match: re.Match[str]) -> str:
    """A URL without its user info and with its secret-looking path segments redacted (its query
    parameters are judged by name, as any `name=value`)."""
    origin = _USERINFO.sub(f"{REDACTED}@", match.group("origin"), count=1)
    return origin + redact_path(match.group("path")) + match.group("rest")


def redact_path(path: str) -> str:
    """`path` with each secret-looking segment replaced by `[redacted]`."""
    return "/".join(REDACTED if segment and secret_segment(segment) else segment for segment in path.split("/"))
