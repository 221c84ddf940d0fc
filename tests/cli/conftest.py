"""`guard` run in this process (Typer's CliRunner): a command's output and exit status without starting
a Python for it. Tests start a real `guard` process only where the behaviour needs one: stdio wiring,
signals, what a fresh process imports."""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# The SDK's stdio client writes an upstream's stderr to the `sys.stderr` of the moment it is imported: import
# it now, while that is a real file, not later inside a run, where CliRunner has put a buffer in its place.
import mcp.client.stdio  # noqa: F401
from typer.testing import CliRunner

from guard.cli.app import app
from guard.cli.logs import LIBRARIES


@dataclass(frozen=True)
class Ran:
    """What a command printed and the status it exited with."""

    status: int
    stdout: str
    stderr: str


def guard(*args: str, env: dict[str, str | None] | None = None) -> Ran:
    """`guard ARGS` in this process, tables as wide as they need (`env`: variables set, or unset with None).
    An exception no command turns into an exit status fails the test."""
    with _process_logging_kept():
        result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})}, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


@contextmanager
def _process_logging_kept() -> Iterator[None]:
    """`guard`'s global options set up the process's logging (its root handler, the libraries' levels,
    warnings, the excepthook); put pytest's back after each run."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in LIBRARIES}
    excepthook, showwarning = sys.excepthook, warnings.showwarning
    try:
        yield
    finally:
        logging.captureWarnings(False)
        warnings.showwarning = showwarning
        sys.excepthook = excepthook
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in libraries.items():
            logging.getLogger(name).setLevel(was)


def json_lines(text: str) -> list[Any]:
    """Each line of a command's `--json` output (one object per line), read."""
    return [json.loads(line) for line in text.splitlines()]


def plain(text: str) -> str:
    """The words of a message, without the box and line wrapping rich draws around usage errors."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())
