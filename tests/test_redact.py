"""The redactor and `public_url`: each planted secret is redacted; ordinary text is left as it was."""

from __future__ import annotations

import subprocess
import sys

import pytest

from guard.payments.adapters._facts import public_url
from guard.redact import redact, secret_segment
from tests.conftest import WAIT_S

PAYMENT_HASH = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
PREIMAGE = "7f3c" * 16
MACAROON = "AgEDbG9jYWxob3N0AkIwMDAwNGY5YThiN2M2ZDVlNGYzYTJiMWMAAAYgq1w8"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl_ok"
INVOICE = "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqf"
X402_SIGNATURE = (
    "0x2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf58"
    "36e9bd15092f9ecab05ded3d6293af148b571c"
)

# (text, the secret part that must not survive)
PLANTED = [
    # a keyword, then its value, in prose
    ("macaroon XYZ", "XYZ"),
    (f"the preimage {PREIMAGE} proves it", PREIMAGE),
    (f"invoice {INVOICE}", "zyg3zyg3"),
    ("token tk_9f8e7d", "tk_9f8e7d"),
    ("secret 's3cr3t value'", "s3cr3t value"),
    ("password hunter2", "hunter2"),
    ("password: hunter", "hunter"),
    ("signature 0xdeadbeef01", "deadbeef01"),
    ("api key AK12345", "AK12345"),
    ("API-KEY: short", "short"),
    ("Bearer abc123", "abc123"),
    ("bearer tok_9f8e", "tok_9f8e"),
    ("LSAT AgEDbG9j:7f3c", "AgEDbG9j"),
    ("nwc 1a2b3c4d", "1a2b3c4d"),
    ("authorization: Token abc123", "abc123"),
    ("Authorization: Bearer opaque", "opaque"),
    ("x-payment eyJ4NDAy", "eyJ4NDAy"),
    ("X-PAYMENT: abc", "abc"),
    ("PAYMENT-SIGNATURE: sig1", "sig1"),
    ("Cookie: sessionid=abc; csrftoken=def", "abc"),
    ("Cookie: sessionid=abc; csrftoken=def", "def"),
    ("cookie 9a8b7c", "9a8b7c"),
    # a sensitive name, whatever the value's length (JSON, Python, headers, env, kwargs)
    ('"x-custom-auth": "ab12"', "ab12"),
    ("X-Api-Key: short", "short"),
    ('{"x-payment": "eyJwYXkiOjF9"}', "eyJwYXkiOjF9"),
    ('{"payment-signature":"p-sig"}', "p-sig"),
    ('{"authorization": "Bearer two words"}', "two words"),
    ('{"refreshToken":"r1"}', "r1"),
    ('"client_secret": "c"', '"c"'),
    ('"passwd": "pw"', '"pw"'),
    ('"pwd": "pw"', '"pw"'),
    ('"sig": "s1"', "s1"),
    ('"credentials": "cr"', '"cr"'),
    ('"nwcUri": "u1"', "u1"),
    ('"sessionToken": "st"', '"st"'),
    ('"password_hash": "$2b$12$abc"', "abc"),
    ('"set-cookie": "ck"', '"ck"'),
    (f'"macaroon": "{MACAROON}"', "AgEDbG9j"),
    (f'"preimage":"{PREIMAGE}"', PREIMAGE),
    ("{'macaroon': 'm1', 'preimage': 'p1'}", "m1"),
    ("{'macaroon': 'm1', 'preimage': 'p1'}", "p1"),
    ('{\\"preimage\\":\\"abcd\\"}', "abcd"),
    ("params={'arguments': {'api_key': 'k1'}}", "k1"),
    ("CallToolRequestParams(name='x', token='t0k')", "t0k"),
    ("P402_API_KEY=sk_live_4f9a8b7c6d5e4f3a2b1c", "4f9a8b7c"),
    ("MY_TOKEN=abc", "abc"),
    (f"preimage={PREIMAGE}", PREIMAGE),
    # URLs: user info and sensitive query parameters
    ("https://user:pa55@api.example/x", "pa55"),
    ("https://user:pa55@api.example/x", "user"),
    ("GET https://api.example/data?api_key=k1&token=t1&sig=s1&page=2", "k1"),
    ("GET https://api.example/data?api_key=k1&token=t1&sig=s1&page=2", "t1"),
    ("GET https://api.example/data?api_key=k1&token=t1&sig=s1&page=2", "s1"),
    ("https://api.example/k/sk_live_abc123/data", "sk_live_abc123"),
    (f"https://api.example/token/{JWT}/", "eyJzdWIiOiIxMjM0In0"),
    # by shape
    (f"Authorization: L402 {MACAROON}:{PREIMAGE}", PREIMAGE),
    ("nostr+walletconnect://b889ff5b1513b641e2a139f661a6613649?relay=wss%3A%2F%2Fr&secret=77aa", "77aa"),
    (JWT, "eyJzdWIiOiIxMjM0In0"),
    ("ghp_" + "a1B2" * 9, "a1B2a1B2"),
    ("github_pat_11ABCDEFG0abcdefghijkl_mnop", "11ABCDEFG0"),
    ("xoxb-1234-5678-abcdEFGH", "abcdEFGH"),
    ("AKIAIOSFODNN7EXAMPLE", "IOSFODNN7"),
    ("sk-proj-abc123def456ghi", "abc123def456"),
    (INVOICE, "zyg3zyg3"),
    ("cashuAeyJ0b2tlbiI6W3sicHJvb2ZzIjpbeyJhbW91bnQiOjJ9XX1dfQ", "W3sicHJvb2Z"),
    (MACAROON, "AgEDbG9j"),
    ("MDAxY2xvY2F0aW9uIGxvY2FsaG9zdDo4MDgxCjAwMjZpZGVudGlmaWVy", "Y2xvY2F0aW9u"),
    (X402_SIGNATURE, "2d6a7588d6acca50"),
]


@pytest.mark.parametrize(("text", "secret"), PLANTED)
def test_a_planted_secret_is_redacted(text: str, secret: str) -> None:
    scrubbed = redact(f"upstream said: {text} (while paying)")
    assert secret not in scrubbed
    assert "[redacted]" in scrubbed
    assert scrubbed.startswith("upstream said: ") and scrubbed.endswith(" (while paying)")


BENIGN = [
    "spent 2500 sat of 10000 sat (25%); 7.5 usd left",
    "the price 50 sat is over the per-call cap of 10 sat",
    "tools: l402-fetch, l402-buy-credits, get_weather, pay_invoice, guard-budget",
    "fetching https://weather.example/forecast/paris?days=3&units=metric",
    "POST https://api.example/v1/chat/completions",
    "https://blog.example/posts/how-to-make-bread-at-home-in-twenty-twenty-four-easy",
    "at 2026-11-21T12:00:00+00:00 (12:00:00.123Z)",
    f"hold 3 (payment {PAYMENT_HASH}) was in doubt; the upstream shows it paid: settled",
    f'{{"paymentHash": "{PAYMENT_HASH}", "payment_hash": "{PAYMENT_HASH}"}}',
    "unknown asset 0x036CbD53842c5426634e7929541eC2318f3dCF7e on eip155:84532",
    "pay_invoice: the invoice is not a BOLT11 invoice (no ln<currency><amount> prefix)",
    "the invoice cannot be decoded (bad checksum, signature or fields); the invoice amount is too large",
    "session s1 (identity alice) relaying to python tests/upstreams/fake_402mcp.py",
    "Created new transport with session ID: 7c9f0e4d2b6a48e1a3f5c7d9e0b1a2c3",
    "refused an HTTP request from 127.0.0.1: missing `Authorization: Bearer <token>` header",
    "refused an HTTP request from 127.0.0.1: the bearer token is not valid",
    "/check/work/main/.venv/bin/python /check/work/main/tests/upstreams/dual_era.py exited",
    "Error: connect ECONNREFUSED 127.0.0.1:8080 (missing P402_API_KEY?)",
    "the balance tokens:s1 has 500 tokens left; Token Pilot token budget",
    '{"max_tokens": 100, "paymentRequired": true, "session": null, "tokens": 12}',
    '{"progressToken": "abc-123", "author": "Jane"}',
    "rate limit reached: 10 calls per minute for l402-fetch (per session)",
    'HTTP Request: POST http://127.0.0.1:8080/mcp "HTTP/1.1 200 OK"',
    '127.0.0.1:5555 - "POST /mcp HTTP/1.1" 200',
    "an approval is bound to a digest of the exact arguments",
    "SomeVeryLongJavaStyleClassNameForTestingPurposesAndMore",
]


@pytest.mark.parametrize("text", BENIGN)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


PUBLIC_URLS = [
    (
        "https://user:pass@API.example:8443/v1/chat/completions?api_key=x#frag",
        "https://api.example:8443/v1/chat/completions",
    ),
    ("https://api.example/k/sk_live_abc123XYZ/data", "https://api.example/k/[redacted]/data"),
    (f"https://api.example/token/{JWT}/", "https://api.example/token/[redacted]/"),
    (f"https://api.example/files/{'ab' * 16}", "https://api.example/files/[redacted]"),
    ("https://api.example/k/a8Fk2LmQ9xZ3pR7tV1wY/data", "https://api.example/k/[redacted]/data"),
    ("https://api.example/key=abc123/data", "https://api.example/[redacted]/data"),
    ("https://api.example/o/550e8400-e29b-41d4-a716-446655440000", "https://api.example/o/[redacted]"),
    ("https://weather.example/forecast/paris", "https://weather.example/forecast/paris"),
    ("https://api.example/v1/items/item-42/2026-11-21", "https://api.example/v1/items/item-42/2026-11-21"),
    ("http://[::1]:8080/mcp", "http://[::1]:8080/mcp"),
    ("mcp://tool/financial_analysis", "mcp://tool/financial_analysis"),
    ("tool:get_weather", "tool:get_weather"),
    ("/k/ghp_a1B2a1B2a1B2a1B2a1B2a1B2/x?token=t", "/k/[redacted]/x"),
    ("http://[::1/broken?token=t", "http://[::1/broken"),
]


@pytest.mark.parametrize(("url", "shown"), PUBLIC_URLS)
def test_public_url_keeps_what_identifies_a_resource_and_drops_secrets(url: str, shown: str) -> None:
    assert public_url(url) == shown


@pytest.mark.parametrize("segment", ["v1", "completions", "paris", "2026-11-21", "item-42", "l402-fetch", "README.md"])
def test_ordinary_path_segments_are_not_secrets(segment: str) -> None:
    assert not secret_segment(segment)


def test_hostile_text_is_redacted_without_quadratic_backtracking() -> None:
    """An upstream's stderr is hostile: long dotted runs, repeated names and prefixes are redacted at
    once (a pattern that backtracks quadratically takes minutes on these, and the bounded wait fails)."""
    script = (
        "from guard.redact import redact\n"
        "for text in ('a.' * 100_000, 'token' * 50_000, 'x+' * 100_000, '\"key\":' * 50_000, 'sk-' * 50_000):\n"
        "    redact(text)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=WAIT_S)


# --- secrets as upstreams print them, inside a sentence ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret_part"),
    [
        ("nostr+walletconnect://b889ff5b1513b641e2a139f661a6613649?relay=wss%3A%2F%2Fr&secret=77aa", "77aa"),
        ("Authorization: L402 AgEDbG9jYWxob3N0AkIwMDAw:5f8b2c9d0e1f", "5f8b2c9d0e1f"),
        (
            "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqf",
            "zyg3zyg3",
        ),
        ("preimage=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "89abcdef"),
        ("P402_API_KEY=sk_live_4f9a8b7c6d5e4f3a2b1c", "4f9a8b7c"),
        ("cashuAeyJ0b2tlbiI6W3sicHJvb2ZzIjpbeyJhbW91bnQiOjJ9XX1dfQ", "W3sicHJvb2Z"),
        ("X-PAYMENT: eyJ4NDAyVmVyc2lvbiI6MSwic2NoZW1lIjoiZXhhY3QifQ==", "eyJ4NDAy"),
        ("PAYMENT-SIGNATURE: eyJzaWduYXR1cmUiOiIweGFiIn0", "eyJzaWdu"),
        ("AgEDbG9jYWxob3N0AkIwMDAwNGY5YThiN2M2ZDVlNGYzYTJiMWM/x+y", "bG9jYWxob3N0"),
        ("MDAxY2xvY2F0aW9uIGxvY2FsaG9zdDo4MDgxCjAwMjZpZGVudGlmaWVy", "Y2xvY2F0aW9u"),
    ],
)
def test_redact_removes_each_kind_of_secret(text: str, secret_part: str) -> None:
    scrubbed = redact(f"upstream said: {text} (while paying)")
    assert secret_part not in scrubbed
    assert scrubbed.startswith("upstream said: ") and scrubbed.endswith(" (while paying)")


@pytest.mark.parametrize(
    "line",
    [
        "Error: connect ECONNREFUSED 127.0.0.1:8080 (missing P402_API_KEY?)",
        "/check/work/main/.venv/bin/python /check/work/main/tests/upstreams/dual_era.py exited",
    ],
)
def test_redact_keeps_ordinary_diagnostics(line: str) -> None:
    assert redact(line) == line
