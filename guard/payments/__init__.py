"""Payments: where the money in calls meets the ledger. No MCP SDK here.

payments.py     `Payments`: the one object the gate and the scheduler use
reading.py      which adapter reads a call and its answer (x402 first)
decision.py     how a call is priced and budgeted: a `Bound`, or a denial
balances.py     whether the balances a payment draws on can pay it; keeping them fresh
settlement.py   what the answer (or its absence) does to the call's hold
learning.py     what an answer reveals, stored; the guard's own calls upstream
reconcile.py    proofs and balance moves held against what the guard counted
adapters/       one pure module per upstream family: facts, never storage
"""
