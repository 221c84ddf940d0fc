"""What several commands share: the upstream they name and the policy file they read."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.cli.options import default_policy_path, policy_path, upstream_spec
from guard.errors import ConfigError
from guard.proxy.upstream import HttpUpstream, StdioUpstream


def test_the_upstream_is_a_command_or_a_url() -> None:
    assert upstream_spec(["npx", "-y", "402-mcp"], None) == StdioUpstream(("npx", "-y", "402-mcp"))
    assert upstream_spec(None, "https://mcp.example/mcp") == HttpUpstream("https://mcp.example/mcp")


def test_a_url_with_a_password_is_named_without_it() -> None:
    with pytest.raises(ConfigError) as refused:
        upstream_spec(None, "ftp://user:hunter2-secret@files.example/")
    assert "hunter2-secret" not in str(refused.value)


def test_the_default_policy_is_under_the_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_policy_path() == tmp_path / "guard" / "policy.yaml"
    with pytest.raises(ConfigError, match="`guard init -- CMD` writes a starting policy"):
        policy_path(None)
    default_policy_path().parent.mkdir()
    default_policy_path().write_text("version: 1\n")
    assert policy_path(None) == default_policy_path()
    assert policy_path(tmp_path / "mine.yaml") == tmp_path / "mine.yaml"
