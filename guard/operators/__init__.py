"""What operators see and are told: views of the ledger, never in a call's way. No MCP SDK here except
`refresh.py` (a one-off client of the upstream for `guard refresh`).

budget_view.py   a budget and a balance as fields (`guard budget show`, the `guard-budget` tool)
report.py        the spend report rendered: md, html (an inline pygal chart), json, csv
alerts.py        webhook alerts: budget thresholds, payments in doubt or over their reservation
metrics.py       Prometheus `/metrics` (HTTP mode)
schedule.py      `guard run`'s jobs: the balance refresh, the nightly report
refresh.py       `guard refresh` / `guard run --refresh-only`: the due balances, once
"""
