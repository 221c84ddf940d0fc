"""What the chain says of x402 payments in doubt (policy `chains: {eip155:8453: {rpc: URL}}`).

An x402 `exact` EVM payment is a signed EIP-3009 authorization: anyone holding it can move `value` from the
payer once (by its nonce) until `validBefore`. The token contract's `authorizationState(payer, nonce)` (an
`eth_call`) says whether it was used. For each hold in doubt whose payment carried one:
- used → settled at the authorized value (the money left);
- unused, and `validBefore` passed (with a margin for block times) → voided: it can never be used now;
- unused before that → still in doubt (it may yet be submitted): asked again on the next run.
A node that errors, times out or answers something unreadable resolves nothing (fail closed). Each
resolution is written with its call event in one ledger transaction. Runs on the balance refresh schedule
and in `guard holds reconcile`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Literal

import httpx
from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError, EncodingError

from guard.core import off_loop
from guard.errors import ChainError
from guard.payments.reconcile import resolution
from guard.policy.rules import Policy
from ledgers import Amount, Authorization, HoldInfo, Ledger

logger = logging.getLogger("guard.payments")

# The first 4 bytes of keccak256("authorizationState(address,bytes32)"): the function's selector (a test
# checks it against the one the x402 SDK computes from the signature).
AUTHORIZATION_STATE = bytes.fromhex("e94a0102")
# A block's timestamp may trail the guard's clock: an unused authorization is voided only this long after
# its validBefore, when no block can still include it.
BLOCK_TIME_MARGIN = timedelta(minutes=2)


@dataclass(frozen=True)
class Node:
    """A chain's JSON-RPC endpoint (the policy's `chains.<network>`)."""

    rpc: str
    timeout_s: float = 10.0


def nodes(policy: Policy) -> dict[str, Node]:
    """The nodes the policy names, by network (`chains:`)."""
    return {network: Node(spec.rpc, float(spec.timeout)) for network, spec in policy.spec.chains.items()}


@dataclass(frozen=True)
class Checked:
    """What became of one hold in doubt: `settled`, `voided`, `in_doubt` (still), or `unknown` (the node
    could not say)."""

    hold: int
    outcome: Literal["settled", "voided", "in_doubt", "unknown"]
    why: str


async def reconcile(
    ledger: Ledger,
    nodes: Mapping[str, Node],
    *,
    now: datetime | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Checked]:
    """Ask the chain about every x402 hold in doubt on a network in `nodes`; resolve what it proves."""
    found = await off_loop(ledger.authorized_in_doubt)
    checked: list[Checked] = []
    async with httpx.AsyncClient(transport=transport) as client:
        for hold, authorization in found:
            node = nodes.get(authorization.network)
            if node is None:
                continue
            try:
                used = await authorization_used(client, node, authorization)
            except ChainError as exc:
                logger.warning(
                    "hold %d: the %s node could not say whether its payment was made: %s",
                    hold.id,
                    authorization.network,
                    exc,
                )
                checked.append(Checked(hold.id, "unknown", str(exc)))
                continue
            checked.append(await _decide(ledger, hold, authorization, used, now or datetime.now(UTC)))
    return checked


async def authorization_used(client: httpx.AsyncClient, node: Node, authorization: Authorization) -> bool:
    """`authorizationState(payer, nonce)` on the token contract, at the latest block.

    Raises:
        ChainError: the authorization cannot be encoded, or the node's answer is not a readable bool."""
    try:
        nonce = bytes.fromhex(authorization.nonce.removeprefix("0x"))
        data = AUTHORIZATION_STATE + encode(["address", "bytes32"], [authorization.payer, nonce])
    except (ValueError, EncodingError) as exc:
        raise ChainError(f"the authorization cannot be asked about: {exc}") from None
    call = {"to": authorization.asset, "data": "0x" + data.hex()}
    request = {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [call, "latest"]}
    try:
        response = await client.post(node.rpc, json=request, timeout=node.timeout_s)
        response.raise_for_status()
        answer = response.json()
    except httpx.HTTPStatusError as exc:
        raise ChainError(f"HTTP {exc.response.status_code}") from None
    except httpx.HTTPError as exc:
        raise ChainError(f"{type(exc).__name__}") from None  # never the URL: it may carry an API key
    except ValueError:
        raise ChainError("the answer is not JSON") from None
    if not isinstance(answer, dict) or "result" not in answer:
        error = answer.get("error") if isinstance(answer, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise ChainError(f"the node refused the call: {str(message)[:200]}" if message else "no result")
    result = answer["result"]
    try:
        if not isinstance(result, str) or not result.startswith("0x"):
            raise ValueError(result)
        (used,) = decode(["bool"], bytes.fromhex(result[2:]))
    except (ValueError, DecodingError):
        raise ChainError(f"the result is not an ABI-encoded bool: {str(result)[:80]}") from None
    return bool(used)


async def _decide(ledger: Ledger, hold: HoldInfo, authorization: Authorization, used: bool, now: datetime) -> Checked:
    where = f"{authorization.network} shows authorization {authorization.nonce}"
    if used:
        spent = authorization.value
        event = resolution(hold, f"hold {hold.id} reconciled: {where} was used: {spent} left", spent)
        await off_loop(partial(ledger.resolve, hold.id, spent, event=event))
        logger.info("hold %d: the chain shows its payment was made: settled at %s", hold.id, spent)
        return Checked(hold.id, "settled", f"used: {spent} left")
    if now > authorization.valid_before + BLOCK_TIME_MARGIN:
        event = resolution(
            hold, f"hold {hold.id} reconciled: {where} unused past its validBefore: it can never be used", None
        )
        await off_loop(partial(ledger.resolve, hold.id, Amount(0, hold.amount.unit), event=event))
        logger.info("hold %d: its authorization lapsed unused: voided", hold.id)
        return Checked(hold.id, "voided", "unused past validBefore")
    return Checked(hold.id, "in_doubt", f"unused so far; usable until {authorization.valid_before.isoformat()}")
