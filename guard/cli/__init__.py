"""The `guard` command line: one module per command group, a thin layer over the library."""

from guard.cli.app import app, main

__all__ = ["app", "main"]
