"""The layout docs/ARCHITECTURE.md describes, held: every import (top-level or inside a function) points one
way, and the MCP SDK stays where the page says it is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SHARED = {"core", "errors", "names", "redact", "text", "_version"}
# What each part may import from guard (besides itself and the shared modules); ledgers may import nothing.
MAY_IMPORT = {
    "cli": {"proxy", "gate", "operators", "payments", "policy", "demo"},
    "proxy": set(),
    "gate": {"operators.budget_view", "payments", "policy"},
    "operators": {"payments", "policy", "proxy.upstream"},
    "payments": {"policy"},
    "policy": set(),
    "demo": set(),
}
# Where `import mcp` may appear: the wire, the simulated server, and the commands that talk to an upstream.
MAY_LOAD_THE_SDK = (
    "guard/proxy/",
    "guard/demo/",
    "guard/cli/init.py",
    "guard/cli/demo.py",
    "guard/operators/refresh.py",
)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute (`from . import x` read against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            if (ROOT / module.replace(".", "/")).is_dir():  # names from a package: its modules
                found.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                found.add(module)
    return found


def part_of(path: Path) -> str:
    parts = path.relative_to(ROOT / "guard").with_suffix("").parts
    if parts == ("__main__",):
        return "cli"  # `python -m guard` is the command line
    return parts[0] if len(parts) > 1 else "shared"


SOURCES = sorted((ROOT / "guard").rglob("*.py")) + sorted((ROOT / "ledgers").rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    found = imports(path)
    if relative.startswith("ledgers/"):
        assert not {m for m in found if m == "guard" or m.startswith(("guard.", "mcp"))}, (
            "ledgers knows no guard, no MCP"
        )
        return
    part = part_of(path)
    allowed = SHARED | {part} | (MAY_IMPORT.get(part, set()) if part != "shared" else set())
    wrong = sorted(
        module
        for module in found
        if module.startswith("guard.")
        and not any(module[len("guard.") :] == a or module[len("guard.") :].startswith(a + ".") for a in allowed)
    )
    if part == "shared":  # the shared modules import no part of guard
        wrong = sorted(m for m in found if m.startswith("guard.") and m.split(".")[1] not in SHARED)
    assert not wrong, f"{relative} ({part}) imports {wrong}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_mcp_sdk_stays_at_the_wire(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    if relative.startswith(MAY_LOAD_THE_SDK):
        return
    assert not {m for m in imports(path) if m == "mcp" or m.startswith("mcp.")}, f"{relative} loads the MCP SDK"


def test_the_rules_hold_something() -> None:
    """The checks above would pass on an empty list: they see the modules and the imports they police."""
    assert len(SOURCES) > 60
    assert "guard.payments.decision" in imports(ROOT / "guard/gate/gate.py")
    assert any(m.startswith("mcp") for m in imports(ROOT / "guard/proxy/relay.py"))
