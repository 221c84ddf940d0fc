"""Policy texts several test modules read: a file using every rule kind, an Intercept seed, and mistakes
with where a policy error must locate them."""

from __future__ import annotations

from typing import Any

import pytest

INTERCEPT = """\
    version: "1"
    description: inline intercept policy
    hide: [admin-reset]
    tools:
      pay:
        rules:
          - name: never
            action: deny
            on_deny: paying is off
      fetch:
        rules:
          - name: per-minute
            rate_limit: 5/minute
"""


FULL_POLICY = """\
version: 1
description: every rule kind
default: allow
server: shop
timezone: Europe/Paris
budgets:
  - name: per-session
    limit: 5000 sat
  - name: daily
    limit: 2.50 usd
    scope: identity
    window: day
    tools: [pay]
balances:
  stale_after: 10m
  on_stale: deny
  refresh_every: null
approvals:
  expire_after: 30m
tools:
  "*":
    rate_limit: 100/minute
  fetch:
    when:
      - arg: args.url
        matches: ^https://
        reason: https only
      - arg: headers.authorization
        exists: false
      - arg: items.0.qty
        lte: 10
      - arg: dry_run
        equals: false
      - arg: network
        one_of: [main, test]
    rate_limit:
      - 10/minute
      - limit: 1000/day
        scope: global
    quotas:
      - counter: fetched
        max: 50
        window: hour
        increment_from: count
        scope: identity
  pay:
    action: approve
    pays: true
    price_from: amount
    price_unit: msat
    max_price: 1000 sat
  buy:
    pays: true
    price: 0.01 usdc
  admin:
    hidden: true
  drop:
    action: deny
    reason: never
"""


_MISTAKES: list[Any] = [
    (
        "wrong-type",
        "version: 1\ntools:\n  a:\n    price: 5\n",
        4,
        12,
        "tools.a.price",
        "expected an amount with a unit",
    ),
    (
        "bad-regex",
        "version: 1\ntools:\n  a:\n    when:\n      - arg: x\n        matches: '('\n",
        6,
        18,
        "tools.a.when[0].matches",
        "not a valid regular expression",
    ),
    (
        "amount-without-unit",
        "version: 1\ntools:\n  a:\n    max_price: '500'\n",
        4,
        16,
        "tools.a.max_price",
        "expected an amount with a unit, such as '1000 sat' or '2.50 usd' ('500' is not an amount",
    ),
    (
        "bad-rate",
        "version: 1\ntools:\n  a:\n    rate_limit: 10/fortnight\n",
        4,
        17,
        "tools.a.rate_limit",
        "expected a rate such as 10/minute",
    ),
    (
        "duplicate-key",
        "version: 1\ndefault: deny\ndefault: allow\n",
        3,
        1,
        "",
        "not valid YAML: duplicate key 'default'",
    ),
    (
        "yaml-syntax",
        "version: 1\ntools:\n  a:\n    when:\n      - arg: x\n        equals: a: b\n",
        6,
        18,
        "",
        "not valid YAML: mapping values are not allowed here",
    ),
    ("unknown-preset", "version: 1\npreset: nope\n", 2, 9, "preset", "unknown preset 'nope'; shipped:"),
    ("wrong-version", "version: 2\n", 1, 10, "version", "expected 1"),
    (
        "missing-key",
        "version: 1\nbudgets:\n  - name: b\n    scope: session\n",
        3,
        5,
        "budgets[0]",
        "missing key 'limit'",
    ),
    ("bad-timezone", "version: 1\ntimezone: Mars/Olympus\n", 2, 11, "timezone", "expected an IANA time zone"),
    (
        "two-tests",
        "version: 1\ntools:\n  a:\n    when:\n      - {arg: x, lt: 1, gt: 0}\n",
        5,
        9,
        "tools.a.when[0]",
        "a condition needs exactly one of",
    ),
    pytest.param(
        "unknown-key",
        "version: 1\ntools:\n  a:\n    colour: red\n",
        4,
        5,
        "tools.a.colour",
        "unknown key 'colour'",
        id="unknown-key",
    ),
    pytest.param(
        "unknown-key-with-a-mapping",
        "version: 1\ntools:\n  a:\n    colour:\n      shade: red\n",
        4,
        5,
        "tools.a.colour",
        "unknown key 'colour'",
        id="unknown-key-with-a-mapping",
    ),
]
MISTAKES = [pytest.param(*c, id=c[0]) if type(c) is tuple else c for c in _MISTAKES]
