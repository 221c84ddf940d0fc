"""A paid MCP server made with the official x402 SDK (x402 2.25.0, `x402.mcp`), over a chain faked in memory.

Runs in the SDK's own environment (`.venv-x402/bin/python tests/x402/sdk_server.py`, stdio): the SDK needs
the MCP SDK 1.x, guard runs on 2.x. Everything but the chain is the SDK's: `create_payment_wrapper` on a
FastMCP server, its async resource server, its facilitator (`x402Facilitator`) with the `exact` EVM
scheme, so verification (EIP-712 signature recovery, amounts, time window) and settlement are the SDK's.
Only the chain is `FakeChain`: the SDK's `FacilitatorEvmSigner`, answering from a JSON state file.

Tools (Base Sepolia USDC, `exact`): `get_weather {city}` $0.01, `summarize {text}` $0.025, `translate
{text}` $0.003; `ping` is free.

Environment: X402_CHAIN_STATE, the chain's state file (JSON), read before and written after each change:
- `used`: {nonce (lower case): {payer, to, value, tx}}: authorizations executed (`authorizationState`);
- `balances`: {payer (lower case): atomic units}: payers not listed have plenty;
- `arrived`: [{tool, nonce}]: every payment that reached the resource server (before its verification);
- `outcomes`: {tool: knob} for the next paid call of that tool: "pending" (the transfer lands, its receipt
  never comes: the SDK answers `settlement_pending`), "revert" (the transaction reverts: `transaction_failed`),
  "tool_fails" (the handler raises after verification: the SDK does not settle).
tests/x402/chain.py reads and edits the same file from the test's side; tests/x402/node.py answers
`eth_call authorizationState` from it like a node.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from mcp.server.fastmcp import FastMCP
from x402 import x402Facilitator, x402ResourceServer
from x402.mcp import create_payment_wrapper
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme, ExactEvmServerScheme
from x402.mechanisms.evm.types import TransactionReceipt
from x402.schemas.config import ResourceConfig

NETWORK = "eip155:84532"
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"  # USDC on Base Sepolia (6 decimals)
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
FACILITATOR = "0x4Fa0000000000000000000000000000000000402"
PRICES = {"get_weather": "$0.01", "summarize": "$0.025", "translate": "$0.003"}
STATE = Path(os.environ["X402_CHAIN_STATE"])


def load() -> dict[str, Any]:
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    for key, empty in (("used", {}), ("balances", {}), ("arrived", []), ("outcomes", {}), ("receipts", {})):
        state.setdefault(key, empty)
    return state


def save(state: dict[str, Any]) -> None:
    temporary = STATE.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=1))
    temporary.replace(STATE)


class Reverted(Exception):
    """What a node says of a call the contract reverts (the SDK maps the words to its reasons)."""


class FakeChain:
    """The SDK's `FacilitatorEvmSigner` over the state file: a USDC contract with EIP-3009."""

    def __init__(self) -> None:
        self.current_tool: str | None = None

    def get_addresses(self) -> list[str]:
        return [FACILITATOR]

    def get_chain_id(self) -> int:
        return 84532

    def get_code(self, address: str) -> bytes:
        return b"\x60\x80" if address.lower() == USDC.lower() else b""  # the token is a contract; payers are not

    def get_balance(self, address: str, token_address: str) -> int:
        return int(load()["balances"].get(address.lower(), 10**12))

    def verify_typed_data(
        self, address: str, domain: Any, types: Any, primary_type: str, message: Any, signature: bytes
    ) -> bool:
        data = {"domain": domain, "types": types, "primaryType": primary_type, "message": message}
        signer = Account.recover_message(encode_typed_data(full_message=data), signature=signature)
        return bool(signer.lower() == address.lower())

    def read_contract(self, address: str, abi: Any, function_name: str, *args: Any) -> Any:
        state = load()
        if function_name == "authorizationState":
            return _nonce(args[1]) in state["used"]
        if function_name == "balanceOf":
            return int(state["balances"].get(str(args[0]).lower(), 10**12))
        if function_name == "name":
            return "USDC"
        if function_name == "version":
            return "2"
        if function_name == "transferWithAuthorization":  # the facilitator's simulation (eth_call)
            self._check_transfer(state, *args[:6])
            return None
        raise Reverted(f"execution reverted: the fake token has no {function_name}")

    def write_contract(self, address: str, abi: Any, function_name: str, *args: Any, data_suffix: Any = None) -> str:
        if function_name != "transferWithAuthorization":
            raise Reverted(f"execution reverted: the fake token has no {function_name}")
        state = load()
        payer, to, value, _after, _before, nonce = args[:6]
        knob = state["outcomes"].pop(self.current_tool or "", None)
        tx = "0x" + hashlib.sha256(f"{_nonce(nonce)}:{time.time_ns()}".encode()).hexdigest()
        if knob == "revert":
            state["receipts"][tx] = 0
        else:
            self._check_transfer(state, *args[:6])
            state["used"][_nonce(nonce)] = {"payer": payer, "to": to, "value": int(value), "tx": tx}
            key = str(payer).lower()
            if key in state["balances"]:
                state["balances"][key] = int(state["balances"][key]) - int(value)
            state["receipts"][tx] = "lost" if knob == "pending" else 1
        save(state)
        return tx

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        status = load()["receipts"].get(tx_hash)
        if status == "lost" or status is None:
            raise TimeoutError(f"transaction {tx_hash} not mined within the wait")
        return TransactionReceipt(status=int(status), block_number=1, tx_hash=tx_hash, logs=None)

    def send_transaction(self, to: str, data: bytes) -> str:
        raise Reverted("execution reverted: the fake chain sends no raw transactions")

    @staticmethod
    def _check_transfer(
        state: dict[str, Any], payer: Any, to: Any, value: Any, after: Any, before: Any, nonce: Any
    ) -> None:
        if _nonce(nonce) in state["used"]:
            raise Reverted("execution reverted: FiatTokenV2: authorization is used or canceled")
        if int(before) <= time.time():
            raise Reverted("execution reverted: FiatTokenV2: authorization is expired")
        if int(state["balances"].get(str(payer).lower(), 10**12)) < int(value):
            raise Reverted("execution reverted: ERC20: transfer amount exceeds balance")


def _nonce(nonce: Any) -> str:
    return ("0x" + nonce.hex() if isinstance(nonce, bytes) else str(nonce)).lower()


def main() -> None:
    chain = FakeChain()
    facilitator = x402Facilitator()
    facilitator.register([NETWORK], ExactEvmFacilitatorScheme(chain))
    server = x402ResourceServer(facilitator)
    server.register(NETWORK, ExactEvmServerScheme())
    server.initialize()

    def arrived(context: Any) -> None:
        state = load()
        nonce = context.payment_payload.payload.get("authorization", {}).get("nonce")
        url = str(getattr(getattr(context.payment_payload, "resource", None), "url", ""))
        state["arrived"].append({"tool": url.removeprefix("mcp://tool/"), "nonce": str(nonce).lower()})
        save(state)

    server.on_before_verify(arrived)
    mcp = FastMCP("x402-sdk-shop")

    def paid(tool: str) -> Any:
        config = ResourceConfig(scheme="exact", pay_to=PAY_TO, price=PRICES[tool], network=NETWORK)
        return create_payment_wrapper(server, accepts=server.build_payment_requirements(config))

    def start(tool: str) -> None:
        chain.current_tool = tool
        if load()["outcomes"].get(tool) == "tool_fails":
            state = load()
            state["outcomes"].pop(tool)
            save(state)
            raise RuntimeError(f"{tool} broke after the payment was verified")

    @mcp.tool(name="get_weather", description="Current weather for a city. Paid: $0.01 (x402).")
    @paid("get_weather")
    async def get_weather(city: str) -> str:
        start("get_weather")
        return json.dumps({"city": city, "forecast": "sunny"})

    @mcp.tool(name="summarize", description="Summarize a text. Paid: $0.025 (x402).")
    @paid("summarize")
    async def summarize(text: str) -> str:
        start("summarize")
        return f"Summary: {text[:20]}"

    @mcp.tool(name="translate", description="Translate a text. Paid: $0.003 (x402).")
    @paid("translate")
    async def translate(text: str) -> str:
        start("translate")
        return text[::-1]

    @mcp.tool(name="ping", description="Free.")
    async def ping() -> str:
        return "pong"

    mcp.run("stdio")


if __name__ == "__main__":
    sys.exit(main())
