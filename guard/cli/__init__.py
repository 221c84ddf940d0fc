"""The `guard` command line: one module per command group, a thin layer over the library.

app.py       the Typer app and its global options (version, log level and format)
exits.py     the one map from errors to exit statuses
options.py   option types several commands share (the upstream, the policy, the ledger)
run.py       `guard run`: its flags checked; serve.py: what it then builds (gate, payments, the front)
budget.py, report.py, ledger.py (ledger, holds), policy.py (policy, approvals, audit), init.py, refresh.py,
demo.py      the other commands
logs.py      logging to stderr, every record redacted
"""

from guard.cli.app import main

__all__ = ["main"]
