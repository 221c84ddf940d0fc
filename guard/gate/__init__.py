"""The gate: the relay's one interception point, filled with the policy, payments and the ledger.

gate.py      `PolicyGate`: each tools/call's ordered checklist; tools/list; policy reloads
answers.py   the answers guard gives itself: a denial, the `guard-budget` tool
audit.py     call events: told to the watchers at once, written to the ledger in batches
"""
