"""Planted secrets never leave through anything guard writes.

Real guards — over stdio and over `--listen` HTTP, with text and json logs, at `--log-level debug` (which
emits every record any higher level would, the MCP SDK's and the HTTP stack's included) — run in front of
the fake 402-mcp and the fake x402 server. Secrets are planted where a client, its environment or a chatty
upstream puts them: a macaroon and its preimage (an `l402-store-token`, an `L402` header on the upstream's
stderr), NWC URIs (guard's environment, the upstream's command line), `x-payment` / `payment-signature` /
`authorization` values (a fetch's headers, the upstream's stderr), an x402 payment signature (`_meta`), the
webhook signing secret (guard's environment, named by `alerts.secret_env`; an alert is sent and verified),
bearer tokens (the tokens file, the HTTP Authorization header, a wrong one, one in the query), a URL's
password and the API keys in its path, query and fragment, and prose (`macaroon XYZ`). The fake also
makes its own secrets (invoices, macaroons, preimages), read from its state file afterwards.

None of them may appear in: the ledger (every column of every table of the SQLite file), guard's stderr,
`guard audit tail` (table and JSON), `guard report` (md, html, json, csv), `guard budget show` (table and
JSON), the alerts' requests (headers and bodies), or the errors guard itself sends the client (denials,
the upstream-gone error, a 401). What the upstream returns inside a result (the fetched body echoes the
URL) is the client's own business: only guard's own answers are checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import GUARD, INITIALIZE, ROOT, WAIT_S, start_http_guard, stop
from tests.operators.webhook import Received, Receiver
from tests.rawguard import JSON, RawGuard
from tests.upstreams.x402_payments import T0, payment_for


def _hex(seed: str, digits: int = 64) -> str:
    return hashlib.sha512(seed.encode()).hexdigest()[:digits]


PREIMAGE = _hex("planted preimage")
PAYMENT_HASH = hashlib.sha256(bytes.fromhex(PREIMAGE)).hexdigest()
# A toll-booth-shaped macaroon (the fake reads the payment hash out of it).
MACAROON = base64.b64encode(
    f"fake-macaroon v1\nlocation = https://api.example\npayment_hash = {PAYMENT_HASH}\nplanted = yes\n".encode()
).decode()
URL_PASSWORD = "pw-" + _hex("url password", 16)
PATH_KEY = "sk_live_" + _hex("path key", 24)
PATH_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0." + _hex("jwt signature", 22)
QUERY_KEY = "ak-" + _hex("query api key", 16)
QUERY_TOKEN = "tk-" + _hex("query token", 16)
FRAGMENT_TOKEN = "fr-" + _hex("fragment token", 16)
PLANTED = {
    "macaroon": MACAROON,
    "preimage": PREIMAGE,
    "NWC URI (environment)": f"nostr+walletconnect://{_hex('env wallet')}?relay=wss://r.ex&secret={_hex('env nwc')}",
    "NWC URI (argument)": f"nostr+walletconnect://{_hex('arg wallet')}?relay=wss://r.ex&secret={_hex('arg nwc')}",
    "x-payment": base64.b64encode(json.dumps({"x402Version": 2, "sig": _hex("x-payment")}).encode()).decode(),
    "payment-signature": "0x" + _hex("payment-signature", 130),
    "x402 signature": "0x" + _hex("x402 signature", 130),
    "authorization header": "hdr_" + _hex("header bearer", 24),
    "bearer token (alice)": "alice-" + _hex("alice token", 24),
    "bearer token (bob)": "bob-" + _hex("bob token", 24),
    "bearer token (wrong)": "mallory-" + _hex("mallory token", 24),
    "bearer token (query)": "q-" + _hex("query bearer", 24),
    "URL password": URL_PASSWORD,
    "API key in a path": PATH_KEY,
    "JWT in a path": PATH_JWT,
    "API key in a query": QUERY_KEY,
    "token in a query": QUERY_TOKEN,
    "token in a fragment": FRAGMENT_TOKEN,
    "prose": "Zq7" + _hex("prose macaroon", 12),
    "short key under a header": "kqzw-vy",  # short, and of letters no hex id or hash contains
    "short key under a JSON name": "Qzw7",
    "webhook signing secret": "whsec_" + base64.b64encode(bytes.fromhex(_hex("webhook signing key"))).decode(),
}
SECRET_PATH = f"/k/{PATH_KEY}/data/token/{PATH_JWT}/"
URL = f"https://alice:{URL_PASSWORD}@api.example{SECRET_PATH}?api_key={QUERY_KEY}&token={QUERY_TOKEN}#access_token={FRAGMENT_TOKEN}"
PRICEY_URL = URL.replace("api.example", "pricey.example")  # another origin: no credential reused
SHOWN_URL = "https://api.example/k/[redacted]/data/token/[redacted]/"

# The upstream, started through a shell that first prints secrets on its stderr (guard logs that stderr
# and quotes its tail in errors); the NWC URI rides on its command line.
CHATTY = r"""
echo "starting with NWC_URI=$NWC_URI" >&2
echo "macaroon $PLANTED_PROSE" >&2
echo "Authorization: L402 $PLANTED_MACAROON:$PLANTED_PREIMAGE" >&2
echo "{\"x-payment\": \"$PLANTED_X_PAYMENT\", \"payment-signature\": \"$PLANTED_PAYMENT_SIGNATURE\"}" >&2
echo "GET $PLANTED_URL" >&2
echo "X-Api-Key: $PLANTED_SHORT_HEADER" >&2
echo "{\"x-custom-auth\": \"$PLANTED_SHORT_JSON\"}" >&2
exec "$@"
"""
ENV = {
    "GUARD_LOG_LEVEL": "debug",
    "NWC_URI": PLANTED["NWC URI (environment)"],
    "PLANTED_PROSE": PLANTED["prose"],
    "PLANTED_MACAROON": MACAROON,
    "PLANTED_PREIMAGE": PREIMAGE,
    "PLANTED_X_PAYMENT": PLANTED["x-payment"],
    "PLANTED_PAYMENT_SIGNATURE": PLANTED["payment-signature"],
    "PLANTED_URL": URL,
    "PLANTED_SHORT_HEADER": PLANTED["short key under a header"],
    "PLANTED_SHORT_JSON": PLANTED["short key under a JSON name"],
    "GUARD_WEBHOOK_SECRET": PLANTED["webhook signing secret"],
}
POLICY = """\
version: 1
default: deny
budgets:
  - name: sats
    limit: 1000 sat
    scope: session
  - name: usdc
    limit: 1 usdc
    scope: session
tools:
  l402-fetch-preview: {}
  l402-credentials: {}
  l402-balance: {}
  l402-store-token: {}
  l402-fetch:
    pays: true
    max_price: 50 sat
  get_weather: {}
alerts:
  webhook: '{webhook}'
  thresholds: [0.01]
  secret_env: GUARD_WEBHOOK_SECRET
"""


def upstream(fake: str) -> list[str]:
    return [
        "sh",
        "-c",
        CHATTY,
        "chatty",
        sys.executable,
        str(ROOT / f"tests/upstreams/{fake}.py"),
        "--nwc",
        PLANTED["NWC URI (argument)"],
    ]


class HttpClient:
    """One client session over raw streamable HTTP (2025-11-25), as an attacker would speak it."""

    def __init__(self, http: httpx.Client, url: str, token: str) -> None:
        self.url = url
        self.http = http
        self.headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
        }
        opened = self.http.post(url, json=INITIALIZE, headers=self.headers)
        assert opened.status_code == 200, opened.text
        self.headers["mcp-session-id"] = opened.headers["mcp-session-id"]
        self.http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers)
        self.ids = iter(range(2, 1000))

    def request(self, method: str, params: JSON) -> JSON:
        request_id = next(self.ids)
        answer = self.http.post(
            self.url,
            json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
            headers=self.headers,
        )
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            messages = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: ")]
        else:
            messages = [answer.json()]
        [message] = [m for m in messages if m.get("id") == request_id]
        return message  # type: ignore[no-any-return]


class Run:
    """The guards of one front and log format, and everything they wrote."""

    def __init__(self, tmp: Path, front: str, fmt: str, webhook: str) -> None:
        self.tmp, self.front = tmp, front
        self.env = {**ENV, "GUARD_LOG_FORMAT": fmt}
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(POLICY.replace("{webhook}", webhook))
        self.ledger = tmp / "ledger.db"
        self.tokens = tmp / "tokens.json"
        self.tokens.write_text(
            json.dumps({"alice": PLANTED["bearer token (alice)"], "bob": PLANTED["bearer token (bob)"]})
        )
        self.stderr: list[str] = []
        self.own_answers: list[Any] = []  # what guard itself answered the client: denials, errors

    @contextmanager
    def serve(self, fake: str, state: JSON) -> Iterator[Any]:
        """A guard in front of `fake` (its state file in tmp); yields a client with `request`."""
        state_file = self.tmp / f"{fake}.json"
        state_file.write_text(json.dumps(state))
        env = {**self.env, "FAKE_STATE": str(state_file)}
        if self.front == "stdio":
            guard = RawGuard(self.tmp, self.policy, upstream=upstream(fake), env=env)
            try:
                yield guard
            finally:
                guard.stop()
                self.stderr += guard.stderr
            return
        args = ["--tokens", str(self.tokens), "--policy", str(self.policy), "--ledger", str(self.ledger)]
        spawned = start_http_guard([*args, "--", *upstream(fake)], env=env)
        try:
            with httpx.Client(timeout=WAIT_S) as http:
                yield HttpClient(http, spawned.url, PLANTED["bearer token (alice)"])
                wrong = http.post(
                    f"{spawned.url}?token={PLANTED['bearer token (query)']}",
                    json=INITIALIZE,
                    headers={
                        "Authorization": f"Bearer {PLANTED['bearer token (wrong)']}",
                        "Accept": "application/json",
                    },
                )
            assert wrong.status_code == 401
            self.own_answers.append(wrong.text)
        finally:
            stop(spawned)
            self.stderr += spawned.stderr_lines

    def call(self, client: Any, name: str, arguments: JSON, meta: JSON | None = None) -> JSON:
        """A tools/call's answer; guard's own answers (denials, errors) are kept for the leak check."""
        params: JSON = {"name": name, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        answer: JSON = client.request("tools/call", params)
        if "error" in answer or (answer["result"].get("structuredContent") or {}).get("denied"):
            self.own_answers.append(answer)
        return answer


def guard_cli(*args: str) -> str:
    done = subprocess.run([*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def ledger_dump(path: Path) -> str:
    """Every value of every row of every table."""
    with sqlite3.connect(path) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join("\t".join(map(str, row)) for table in tables for row in db.execute(f'SELECT * FROM "{table}"'))


def fragments(secret: str) -> set[str]:
    """The secret, and its ends (a redactor that catches only part of a value still leaks the rest)."""
    return {secret, secret[:12], secret[-12:]} if len(secret) >= 24 else {secret}


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("front", ["stdio", "http"])
def test_planted_secrets_never_reach_the_ledger_logs_reports_or_guards_own_errors(
    tmp_path: Path, front: str, fmt: str
) -> None:
    receiver = Receiver()
    try:
        alerted = _planted_secrets_never_leak(tmp_path, front, fmt, receiver)
    finally:
        receiver.close()
    # Not vacuous: the secret signed the alert (the Standard Webhooks library verifies it).
    assert Webhook(PLANTED["webhook signing secret"]).verify(alerted.body, alerted.headers)["threshold"] == "0.01"


def _planted_secrets_never_leak(tmp_path: Path, front: str, fmt: str, receiver: Receiver) -> Received:
    run = Run(tmp_path, front, fmt, receiver.url)
    headers = {
        "x-payment": PLANTED["x-payment"],
        "payment-signature": PLANTED["payment-signature"],
        "authorization": f"Bearer {PLANTED['authorization header']}",
    }
    with run.serve("fake_402mcp", {"prices": {URL: 30, PRICEY_URL: 80}}) as client:
        quoted = run.call(client, "l402-fetch", {"url": URL})
        paid = run.call(client, "l402-fetch", {"url": URL, "autoPay": True, "headers": headers})
        alerted = receiver.next_request()  # 30 sat: 1% of the sats budget passed (waited for while guard runs)
        run.call(client, "l402-fetch", {"url": PRICEY_URL})
        over_cap = run.call(client, "l402-fetch", {"url": PRICEY_URL, "autoPay": True, "headers": headers})
        stored = run.call(client, "l402-store-token", {"url": URL, "token": f"{MACAROON}:{PREIMAGE}"})
        run.call(client, "l402-credentials", {})
        run.call(client, "l402-balance", {"origin": "https://api.example"})
        invoice = json.loads(quoted["result"]["content"][0]["text"])["invoice"]
        not_allowed = run.call(client, "l402-pay", {"invoice": invoice, "macaroon": MACAROON, "preimage": PREIMAGE})
    with run.serve("fake_x402", {"now": T0, "outcomes": {"get_weather": "crash"}}) as client:
        required = run.call(client, "get_weather", {"city": "Oslo"})["result"]["structuredContent"]
        payment = payment_for(required, "cd")
        payment["payload"]["signature"] = PLANTED["x402 signature"]
        gone = run.call(client, "get_weather", {"city": "Oslo"}, meta={"x402/payment": payment})

    # The scenario happened as planned: a paid fetch, two denials, a stored token, a dead upstream.
    l402_state = json.loads((tmp_path / "fake_402mcp.json").read_text())
    assert [(p["url"], p["amount"]) for p in l402_state["payments"]] == [(URL, 30)]
    assert json.loads(paid["result"]["content"][0]["text"])["satsPaid"] == 30
    assert over_cap["result"]["structuredContent"]["rule"] == "tools.l402-fetch.max_price"
    assert not_allowed["result"]["structuredContent"]["rule"] == "default"
    assert json.loads(stored["result"]["content"][0]["text"])["stored"] is True
    assert "exited" in gone["error"]["message"] and "[redacted]" in gone["error"]["message"]
    assert len(json.loads((tmp_path / "fake_x402.json").read_text())["payments"]) == 1

    since = ["--since", "1h", "--ledger", str(run.ledger)]
    written = {
        "the ledger": ledger_dump(run.ledger),
        "guard's stderr": "\n".join(run.stderr),
        "guard audit tail": guard_cli("audit", "tail", "-n", "1000", "--ledger", str(run.ledger)),
        "guard audit tail --json": guard_cli("audit", "tail", "-n", "1000", "--json", "--ledger", str(run.ledger)),
        **{
            f"guard report --format {f}": guard_cli("report", "--format", f, *since)
            for f in ("md", "html", "json", "csv")
        },
        "guard budget show": guard_cli("budget", "show", "--ledger", str(run.ledger)),
        "guard budget show --json": guard_cli("budget", "show", "--json", "--ledger", str(run.ledger)),
        "guard's own answers": "\n".join(json.dumps(answer) for answer in run.own_answers),
        "the alerts' requests": "\n".join(
            f"{r.headers}\n{r.body.decode()}" for r in [alerted, *receiver.taken_requests()]
        ),
    }
    # What the fake made itself (each 402's invoice, macaroon and preimage) is as secret as what was planted.
    made = {
        f"the fake's {field} #{n}": value
        for n, record in enumerate([*l402_state["challenges"].values(), *l402_state["credentials"].values()])
        for field, value in record.items()
        if field in ("invoice", "macaroon", "preimage")
    }
    leaks = [
        (where, what)
        for what, secret in {**PLANTED, **made}.items()
        for where, text in written.items()
        if any(part in text for part in fragments(secret))
    ]
    assert not leaks, "guard wrote secrets:\n" + "\n".join(f"- {what}, in {where}" for where, what in leaks)
    # Not vacuous: what was redacted is still shown as such, and the paid URL is reported without its secrets.
    assert "[redacted]" in written["guard's stderr"]
    assert SHOWN_URL in written["the ledger"] and SHOWN_URL in written["guard report --format json"]
    return alerted
