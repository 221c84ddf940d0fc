"""x402 payments in doubt settled or voided by what the chain says (`chains:`): the token contract's
`authorizationState(payer, nonce)`, asked with an `eth_call` of a local JSON-RPC endpoint that answers
like a node (tests/x402/node.py). A node that errors, times out or answers nonsense resolves nothing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guard.payments import chains
from guard.payments.chains import AUTHORIZATION_STATE, BLOCK_TIME_MARGIN, Node
from ledgers import Amount, Authorization, Budget, Ledger
from tests.x402 import node as fake
from tests.x402.sdk import USDC, Shop, sdk_python
from tests.x402.test_sdk import POLICY, holds

PAYER = "0x504e4FbaB7bC2962b361E3730B965E61F289d0cC"
NONCE = "0x" + "5e" * 32
VALID_BEFORE = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
NETWORK = "eip155:84532"

pytestmark = pytest.mark.anyio


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.db") as opened:
        yield opened


def in_doubt(ledger: Ledger, nonce: str = NONCE) -> int:
    """An x402 payment of 0.01 USDC in doubt, its authorization kept."""
    hold = ledger.reserve(
        [Budget("b", Amount(10**6, "usdc"))], Amount(10_000, "usdc"), idempotency_key=nonce, tool="get_weather"
    )
    ledger.remember_authorization(Authorization(NETWORK, USDC, PAYER, nonce, Amount(10_000, "usdc"), VALID_BEFORE))
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    return hold


async def ask(ledger: Ledger, node: fake.Node, now: datetime, timeout_s: float = 5.0) -> list[chains.Checked]:
    with fake.running(node) as url:
        return await chains.reconcile(ledger, {NETWORK: Node(url, timeout_s)}, now=now)


def resolutions(ledger: Ledger) -> list[str]:
    return [event.call.reason or "" for event in ledger.calls(last=10) if event.call.decision == "resolve"]


async def test_a_used_authorization_settles_its_hold_at_the_authorized_value_with_its_event(ledger: Ledger) -> None:
    hold = in_doubt(ledger)
    node = fake.Node(lambda: {NONCE}, USDC)
    [checked] = await ask(ledger, node, now=VALID_BEFORE - timedelta(minutes=1))

    assert checked == chains.Checked(hold, "settled", "used: 0.01 usdc left")
    assert node.calls == [(PAYER.lower(), NONCE)]
    info = ledger.hold(hold)
    assert (info.phase, info.settled) == ("settled", Amount(10_000, "usdc"))
    assert resolutions(ledger) == [
        f"hold {hold} reconciled: {NETWORK} shows authorization {NONCE} was used: 0.01 usdc left"
    ]


async def test_an_unused_authorization_past_its_valid_before_voids_its_hold(ledger: Ledger) -> None:
    hold = in_doubt(ledger)
    [checked] = await ask(ledger, fake.Node(set, USDC), now=VALID_BEFORE + BLOCK_TIME_MARGIN + timedelta(seconds=1))
    assert checked.outcome == "voided"
    assert ledger.hold(hold).phase == "voided"


@pytest.mark.parametrize(
    "now",
    [VALID_BEFORE - timedelta(seconds=1), VALID_BEFORE + BLOCK_TIME_MARGIN],
    ids=["before validBefore", "within the block-time margin after it"],
)
async def test_an_unused_authorization_that_may_still_be_used_stays_in_doubt(ledger: Ledger, now: datetime) -> None:
    hold = in_doubt(ledger)
    [checked] = await ask(ledger, fake.Node(set, USDC), now=now)
    assert checked.outcome == "in_doubt"
    assert ledger.hold(hold).phase == "in_doubt" and resolutions(ledger) == []


@pytest.mark.parametrize("mode", ["error", "http_500", "garbage", "hang"])
async def test_a_node_that_cannot_answer_resolves_nothing(ledger: Ledger, mode: str) -> None:
    hold = in_doubt(ledger)
    node = fake.Node(lambda: {NONCE}, USDC)
    node.mode = mode
    [checked] = await ask(ledger, node, now=VALID_BEFORE + timedelta(days=1), timeout_s=0.5)
    assert checked.outcome == "unknown"
    assert ledger.hold(hold).phase == "in_doubt" and resolutions(ledger) == []


async def test_holds_on_a_chain_the_policy_does_not_name_are_left_alone(ledger: Ledger) -> None:
    hold = in_doubt(ledger)
    assert await chains.reconcile(ledger, {"eip155:8453": Node("http://127.0.0.1:9/")}) == []
    assert ledger.hold(hold).phase == "in_doubt"


def test_the_selector_is_the_one_the_x402_sdk_computes_for_authorization_state() -> None:
    script = (
        "from eth_utils import function_signature_to_4byte_selector as s;"
        "print(s('authorizationState(address,bytes32)').hex())"
    )
    done = subprocess.run([sdk_python(), "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == AUTHORIZATION_STATE.hex() == fake.SELECTOR


def test_guard_holds_reconcile_settles_what_the_sdk_left_pending_and_keeps_a_failed_tools_payment_in_doubt(
    tmp_path: Path,
) -> None:
    """End to end: the SDK's facilitator answers `settlement_pending` (the transfer landed, its receipt was
    lost) and a tool fails after verification (nothing submitted; its authorization valid 300 s more)."""
    shop = Shop(
        tmp_path,
        POLICY.format(limit="1 usdc"),
        chain={"outcomes": {"summarize": "pending", "get_weather": "tool_fails"}},
    )
    shop.client(
        [{"call": "summarize", "arguments": {"text": "x"}}, {"call": "get_weather", "arguments": {"city": "Oslo"}}]
    )
    assert [phase for _, phase, *_ in holds(shop)] == ["in_doubt", "in_doubt"]

    node = fake.Node(lambda: set(shop.chain()["used"]), USDC)
    with fake.running(node) as url:
        shop.policy.write_text(POLICY.format(limit="1 usdc") + f"chains:\n  {NETWORK}:\n    rpc: {url}\n")
        done = shop.guard("holds", "reconcile", "--policy", str(shop.policy))

    assert done.returncode == 0, done.stderr
    assert [line.split(" (")[0] for line in done.stdout.splitlines()] == ["hold 1: settled", "hold 2: in doubt"]
    assert [(tool, phase, settled) for tool, phase, _, settled, _ in holds(shop)] == [
        ("summarize", "settled", 25_000),
        ("get_weather", "in_doubt", None),
    ]


def test_guard_holds_reconcile_exits_1_when_the_node_cannot_answer_and_2_without_chains(tmp_path: Path) -> None:
    shop = Shop(tmp_path, POLICY.format(limit="1 usdc"))
    with Ledger.open(shop.ledger) as ledger:
        in_doubt(ledger)
    assert shop.guard("holds", "reconcile", "--policy", str(shop.policy)).returncode == 2

    node = fake.Node(set, USDC)
    node.mode = "error"
    with fake.running(node) as url:
        shop.policy.write_text(POLICY.format(limit="1 usdc") + f"chains:\n  {NETWORK}:\n    rpc: {url}\n")
        done = shop.guard("holds", "reconcile", "--policy", str(shop.policy))
    assert done.returncode == 1
    assert "header not found" in done.stdout and url not in done.stdout + done.stderr
    assert json.dumps(done.stderr).count("guard: error: a chain's node could not answer") == 1
