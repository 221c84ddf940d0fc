"""Real 402-mcp sequences replayed through a real `guard run`: the ledger says what the real server spent.

Each test starts `guard run -- python tests/upstreams/replay_402mcp.py`, which answers from recordings of
402-mcp 4.2.1 (tests/captures/), in the order the real server answered them; the client sends the recorded
calls, then `guard budget show --json` is compared with what left the wallet in the recording. The guard's
own calls (a preview before an unquoted fetch) are not in the recordings: the replay answers them with an
error, and the guard falls back to `max_price` as it would with a preview that failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledgers import Ledger
from tests.captures.files import capture
from tests.conftest import GUARD, ROOT, WAIT_S, empty_postgres_ledger
from tests.rawguard import JSON, RawGuard

REPLAY = ROOT / "tests" / "upstreams" / "replay_402mcp.py"
REAL = "402-mcp-4.2.1/"

POLICY = """\
version: 1
default: deny
budgets:
  - name: daily
    limit: 100000 sat
    window: day
tools:
  l402-config: {}
  l402-discover: {}
  l402-fetch-preview: {}
  l402-credentials: {}
  l402-balance: {}
  l402-fetch: {pays: true, max_price: 1000 sat}
  l402-pay: {pays: true, max_price: 1000 sat}
  l402-buy-credits: {pays: true, max_price: 1000 sat}
"""

# A paid fetch (21 sat), a credit purchase (100 sat) and an l402-pay by hash (21 sat): 142 sat left the
# wallet. Before quotes by payment hash, guard counted the l402-pay at its max_price: 1121 sat.
ISSUE_SEQUENCE = [
    f"{REAL}paywall-limits-02-l402-fetch-autopay-ok",
    # No capture holds a paid l402-buy-credits: this one is written in 402-mcp's shape (see its note).
    "synthetic/l402-buy-credits-100-paid",
    f"{REAL}paywall-human-07-l402-fetch-autopay-human",
    f"{REAL}paywall-human-09-l402-pay",
]


def real(*names: str) -> list[str]:
    return [f"{REAL}{name}" for name in names]


class Replay(RawGuard):
    """A `guard run` in front of the replay of `recordings` (names under tests/captures/)."""

    def __init__(self, tmp: Path, recordings: list[str], *, ledger: str | None = None, name: str = "replay") -> None:
        sequence = tmp / f"{name}.json"
        self.log = tmp / f"{name}.log"
        handshake = real("paywall-human-00-initialize", "paywall-human-01-tools-list")
        sequence.write_text(json.dumps(handshake + recordings))
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        self.recordings = recordings
        super().__init__(
            tmp,
            policy,
            upstream=[sys.executable, str(REPLAY)],
            env={"REPLAY": str(sequence), "REPLAY_LOG": str(self.log)},
            ledger=ledger,
        )

    def play(self) -> list[JSON]:
        """Send each recorded call, in order; return guard's answers."""
        answers = []
        for name in self.recordings:
            params = recording(name)["request"]["params"]
            answers.append(self.call(params["name"], params.get("arguments") or {}))
        return answers

    def served(self) -> list[str]:
        """The recordings the replay answered with (the guard's own, unrecorded calls left out)."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line for line in lines if not line.startswith("unrecorded ")]


def recording(name: str) -> JSON:
    if name.startswith(REAL):
        return capture(name.removeprefix(REAL))
    return json.loads((ROOT / "tests" / "captures" / f"{name}.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def replay(tmp_path: Path) -> Iterator[Callable[..., Replay]]:
    started: list[Replay] = []

    def begin(recordings: list[str], **options: Any) -> Replay:
        guard = Replay(tmp_path, recordings, **options)
        started.append(guard)
        return guard

    yield begin
    for guard in started:
        guard.stop()


def budget_show(ledger: Path | str) -> JSON:
    """`guard budget show --json` of the ledger: the daily budget's line."""
    done = subprocess.run(
        [*GUARD, "budget", "show", "--json", "--ledger", str(ledger)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    [daily] = [b for b in json.loads(done.stdout)["budgets"] if b["name"] == "daily"]
    return daily  # type: ignore[no-any-return]


def spent(view: JSON) -> tuple[int, int, int, str]:
    return view["spent"], view["held"], view["in_doubt"], view["unit"]


def answered_as_recorded(guard: Replay, answers: list[JSON]) -> None:
    """Every recorded call reached the replay, in order, and its recorded answer came back unchanged."""
    assert guard.served() == guard.recordings
    for name, answer in zip(guard.recordings, answers, strict=True):
        assert answer == recording(name)["response"]["result"], name


def test_a_paid_fetch_a_credit_purchase_and_an_l402_pay_by_hash_count_the_142_sat_that_left(
    replay: Callable[..., Replay],
) -> None:
    guard = replay(ISSUE_SEQUENCE)
    answers = guard.play()
    guard.stop()

    answered_as_recorded(guard, answers)
    assert spent(budget_show(guard.ledger)) == (142, 0, 0, "sat")
    with Ledger.open(guard.ledger, recover=False) as ledger:
        [pay] = [e.call for e in ledger.calls(last=100) if e.call.tool == "l402-pay"]
        hold = ledger.hold(pay.hold_id or 0)
    # Reserved at the price the 402 named for that hash (capture paywall-human-07), settled at it.
    assert (hold.amount.value, hold.amount.unit, hold.priced_by, hold.settled) == (21, "sat", "quote", hold.amount)


def test_the_human_wallet_sequence_counts_the_21_sat_the_human_paid(replay: Callable[..., Replay]) -> None:
    """paywall-human: previews, a discover, a 402 with a payment page, the human pays, `l402-pay
    {paymentHash}` collects the credential; the credits are then spent without sats."""
    guard = replay(
        real(
            *[
                "paywall-human-02-l402-config",
                "paywall-human-03-l402-discover",
                "paywall-human-04-l402-fetch-preview",
                "paywall-human-05-l402-fetch-nopay",
                "paywall-human-07-l402-fetch-autopay-human",
                "paywall-human-09-l402-pay",
                "paywall-human-10-l402-fetch-paid",
                "paywall-human-11-l402-balance",
                "paywall-human-12-l402-credentials",
                "paywall-human-13-l402-fetch-again",
                "paywall-human-14-l402-fetch-premium-insufficient",
                "paywall-human-15-l402-credentials-after",
            ]
        )
    )
    answers = guard.play()
    guard.stop()

    answered_as_recorded(guard, answers)
    assert spent(budget_show(guard.ledger)) == (21, 0, 0, "sat")


def test_402_mcps_own_refusals_count_nothing_and_the_paid_fetch_counts_its_21_sat(
    replay: Callable[..., Replay],
) -> None:
    """paywall-limits: a paid fetch; then exhausted credits, the per-minute limit, a credit purchase over
    402-mcp's per-request limit and an l402-pay stopped by the per-minute limit: none of them paid."""
    guard = replay(
        real(
            *[
                "paywall-limits-01-l402-config",
                "paywall-limits-02-l402-fetch-autopay-ok",
                "paywall-limits-03-l402-fetch-premium-credits-exhausted",
                "paywall-limits-04-l402-fetch-premium-spend-limit",
                "paywall-limits-05-l402-buy-credits-over-limit",
                "paywall-limits-06-l402-discover",
                "paywall-limits-07-l402-pay-spend-limit",
                "paywall-limits-08-l402-credentials",
            ]
        )
    )
    answers = guard.play()
    guard.stop()

    answered_as_recorded(guard, answers)
    assert spent(budget_show(guard.ledger)) == (21, 0, 0, "sat")
    with Ledger.open(guard.ledger, recover=False) as ledger:
        [pay] = [e.call for e in ledger.calls(last=100) if e.call.tool == "l402-pay"]
        hold = ledger.hold(pay.hold_id or 0)
    # The discover named the hash's invoice (capture paywall-limits-06), but that invoice expired at
    # 2026-11-21 07:51:33 UTC, long before this replay: its price is not used, the cap bounds the l402-pay
    # (flagged so), and 402-mcp's refusal voids it.
    assert (hold.amount.value, hold.amount.unit, hold.priced_by, hold.phase) == (1000, "sat", "max_price", "voided")


def test_two_guards_on_one_postgresql_ledger_share_a_quote_by_payment_hash(
    replay: Callable[..., Replay], postgres_url: str
) -> None:
    """One guard sees the 402 naming the hash and its price; another, on the same ledger, reserves that
    price for the `l402-pay` of that hash."""
    empty_postgres_ledger(postgres_url)
    asked = replay(real("paywall-human-07-l402-fetch-autopay-human"), ledger=postgres_url, name="first")
    answers = asked.play()
    asked.stop()
    paid = replay(real("paywall-human-09-l402-pay"), ledger=postgres_url, name="second")
    answers += paid.play()
    paid.stop()

    assert asked.served() + paid.served() == asked.recordings + paid.recordings
    assert spent(budget_show(postgres_url)) == (21, 0, 0, "sat")
    with Ledger.open(postgres_url, recover=False) as ledger:
        [pay] = [e.call for e in ledger.calls(last=100) if e.call.tool == "l402-pay"]
        hold = ledger.hold(pay.hold_id or 0)
    assert (hold.amount.value, hold.priced_by, hold.settled) == (21, "quote", hold.amount)
