"""The `guard` command line: one module per command group, a thin layer over the library."""

from guard.cli.app import main

__all__ = ["main"]
