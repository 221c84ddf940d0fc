"""The official x402 SDK's MCP client (`x402MCPSession` + `ExactEvmClientScheme`, a throwaway key), making
the calls a test asks for against a stdio MCP server (guard in front of tests/x402/sdk_server.py).

Runs in the SDK's environment: `.venv-x402/bin/python tests/x402/sdk_client.py PLAN -- COMMAND...`.
PLAN is JSON: a list of steps, each `{"call": tool, "arguments": {...}}` (the SDK pays on a 402 and
retries), `{"raw": tool, "arguments": {...}}` (one plain call, no payment: its result as received), or
`{"replay": i}` (resend step i's paid `_meta["x402/payment"]` as it was: a replayed nonce). Prints one
JSON line per step: {is_error, payment_made, payment_response, text, structured, meta}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from eth_account import Account
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from x402 import x402Client
from x402.mcp import x402MCPSession
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.signers import EthAccountSigner

# A throwaway key, made up for these tests: it holds nothing anywhere.
KEY = "0x" + "4b" * 32


class Recorder:
    """The MCP session the SDK's x402 session wraps: remembers the `_meta` of each paid call it sends."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.sent: list[dict[str, Any] | None] = []

    async def initialize(self) -> Any:
        return await self.session.initialize()

    async def list_tools(self) -> Any:
        return await self.session.list_tools()

    async def call_tool(
        self, name: str, arguments: Any = None, read_timeout_seconds: Any = None, meta: Any = None
    ) -> Any:
        self.sent.append(meta)
        return await self.session.call_tool(name, arguments, read_timeout_seconds=read_timeout_seconds, meta=meta)


def result_line(result: Any, payment_made: bool = False, payment_response: Any = None) -> dict[str, Any]:
    content = getattr(result, "content", None) or []
    text = content[0].text if content and hasattr(content[0], "text") else (content[0].get("text") if content else None)
    raw = getattr(result, "raw_result", result)
    response = payment_response
    if hasattr(response, "model_dump"):
        response = response.model_dump(by_alias=True, exclude_none=True)
    return {
        "is_error": bool(getattr(result, "is_error", getattr(result, "isError", False))),
        "payment_made": payment_made,
        "payment_response": response,
        "text": text,
        "structured": getattr(raw, "structuredContent", None),
        "meta": getattr(raw, "meta", None),
    }


async def main(plan: list[dict[str, Any]], command: list[str]) -> None:
    params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    client = x402Client()
    client.register("eip155:*", ExactEvmClientScheme(EthAccountSigner(Account.from_key(KEY))))
    payments: list[Any] = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        recorder = Recorder(session)
        paying = x402MCPSession(recorder, client)
        await paying.initialize()
        for step in plan:
            if "call" in step:
                recorder.sent.clear()
                result = await paying.call_tool(step["call"], step.get("arguments", {}))
                payments.append(next((m for m in recorder.sent if m), None))
                line = result_line(result, result.payment_made, result.payment_response)
            elif "raw" in step:
                payments.append(None)
                line = result_line(await session.call_tool(step["raw"], step.get("arguments", {})))
            else:
                meta = payments[step["replay"]]
                payments.append(meta)
                tool = plan[step["replay"]]["call"]
                line = result_line(await session.call_tool(tool, plan[step["replay"]].get("arguments", {}), meta=meta))
            print(json.dumps(line, default=str), flush=True)


if __name__ == "__main__":
    split = sys.argv.index("--")
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[split + 1 :]))
