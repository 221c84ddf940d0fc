"""Running the official x402 SDK's client and paid server (in their own environment, `.venv-x402`, built by
scripts/install-test-deps) with a real `guard run` between them, and reading the fake chain they share."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GUARD

JSON = dict[str, Any]
HERE = Path(__file__).resolve().parent
SDK_PYTHON = HERE.parents[1] / ".venv-x402" / "bin" / "python"
SERVER = [str(SDK_PYTHON), str(HERE / "sdk_server.py")]
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"  # what the SDK server asks for: USDC on Base Sepolia
# The SDK's client signs, verifies and settles with real time: a call takes seconds, never minutes.
RUN_S = 120


def sdk_python() -> str:
    if not SDK_PYTHON.exists():
        pytest.fail(f"{SDK_PYTHON} is missing: scripts/install-test-deps builds the x402 SDK's environment")
    return str(SDK_PYTHON)


class Shop:
    """The SDK's paid server behind `guard run`, with a ledger, a policy and a chain state in `tmp`."""

    def __init__(self, tmp: Path, policy: str, *, chain: JSON | None = None, session: str = "s1") -> None:
        self.tmp = tmp
        self.ledger = tmp / "ledger.db"
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(policy)
        self.chain_file = tmp / "chain.json"
        if chain is not None:
            self.chain_file.write_text(json.dumps(chain))
        self.session = session

    @property
    def guarded(self) -> list[str]:
        run = [*GUARD, "run", "--policy", str(self.policy), "--ledger", str(self.ledger), "--session", self.session]
        return [*run, "--", *SERVER]

    def client(self, plan: list[JSON], *, through_guard: bool = True) -> list[JSON]:
        """The SDK's client's plan (see tests/x402/sdk_client.py), through guard or straight to the server."""
        command = [sdk_python(), str(HERE / "sdk_client.py"), json.dumps(plan), "--"]
        command += self.guarded if through_guard else SERVER
        env = os.environ | {"X402_CHAIN_STATE": str(self.chain_file), "PYTHONPATH": ""}
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_S, env=env, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def chain(self) -> JSON:
        """The fake chain's state as the SDK's facilitator left it (see tests/x402/sdk_server.py)."""
        return json.loads(self.chain_file.read_text())  # type: ignore[no-any-return]

    def guard(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A `guard` command on this shop's ledger."""
        command = [*GUARD, *args, "--ledger", str(self.ledger)]
        return subprocess.run(command, capture_output=True, text=True, timeout=RUN_S, check=False, env=os.environ)
