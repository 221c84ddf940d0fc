"""Every command and option has help text and a place in README: a command or option added without
documentation fails here (as sqlite-utils' docs tests do), and so does README naming an option that is gone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from guard.cli.app import app
from guard.cli.exits import Status

README = (Path(__file__).parents[2] / "README.md").read_text()


def commands(command: Any = None, path: str = "") -> Iterator[tuple[str, Any]]:
    """(`"budget show"`, its click command) for every command, groups and the root (`""`) included."""
    command = command or typer.main.get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, f"{path} {name}".strip())


COMMANDS = dict(commands())
LEAVES = {path: command for path, command in COMMANDS.items() if not hasattr(command, "commands")}


def options(command: Any) -> list[list[str]]:
    """Each option's names (`--out`, `-o`), `--help` left out."""
    return [param.opts for param in command.params if param.param_type_name == "option" and param.name != "help"]


def sections() -> dict[str, str]:
    """README's text under each heading (up to the next heading), by the heading's text."""
    parts = re.split(r"^#+ (.+)$", README, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def named(heading: str) -> set[str]:
    """The commands a heading is about: `guard policy check FILE` names "policy check" (and its group
    "policy"); "Commands" names the root, whose options are the global ones."""
    if heading == "Commands":
        return {""}
    spans = re.findall(r"`guard ([^`]+)`", heading)
    return {path for path in COMMANDS if path and any(f"{span} ".startswith(f"{path} ") for span in spans)}


def section_of(path: str) -> str:
    for heading, body in sections().items():
        if path in named(heading):
            return body
    raise AssertionError(f"README has no heading naming `guard {path}`")


@pytest.mark.parametrize("path", list(COMMANDS))
def test_every_command_and_option_has_help(path: str) -> None:
    command = COMMANDS[path]
    assert command.help, f"guard {path} has no help text"
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert getattr(param, "help", None), f"guard {path} {param.opts[0]} has no help text"


@pytest.mark.parametrize("path", ["", *LEAVES])
def test_every_command_has_a_readme_section_naming_each_of_its_options(path: str) -> None:
    section = section_of(path)
    for names in options(COMMANDS[path]):
        mentioned = any(re.search(f"`{re.escape(name)}(?![\\w-])", section) for name in names)
        assert mentioned, f"README's section on guard {path} lacks {names[0]}"


def test_every_option_readme_documents_exists() -> None:
    for heading, body in sections().items():
        real = {name for path in named(heading) for names in options(COMMANDS[path]) for name in names}
        documented = set(re.findall(r"^\| `(--[a-z][a-z-]*)", body, flags=re.MULTILINE))
        assert documented <= real, f"README's section {heading!r} documents options guard lacks: {documented - real}"


def test_readme_lists_every_exit_status() -> None:
    table = sections()["Exit statuses"]
    listed = {int(status) for status in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)}
    assert listed == {status.value for status in Status}
