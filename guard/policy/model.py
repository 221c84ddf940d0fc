"""The policy file's model: what a policy may say (pydantic models with the field types that check it, the
published JSON Schema) and the bounds past which a number is a mistake.

Reading files (YAML/JSON with positions, presets, located errors) is `guard.policy.files`; the decisions a
policy makes on a call are `guard.policy.rules`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from functools import cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from guard.core import JSON
from guard.names import folded, spelling
from ledgers import Amount, AmountError, LedgerError, Rates, Window

POLICY_VERSION = 1

# Bounds on what a policy may say: past them a number is a mistake (or an attack on the guard), and the
# ledger's integer columns and time arithmetic stay far from overflowing.
MAX_COUNT = 1_000_000_000  # calls in a rate limit, a quota's max and increment
MAX_DURATION_DAYS = 3650  # about 10 years: windows, staleness, approval expiry
# The longest string a `matches` pattern is run against; a longer argument fails the condition. RE2 is
# linear in the string, but a pattern with large counted repeats costs microseconds per character.
MAX_MATCHED_CHARS = 65_536

# --- field types: plain strings in the file, checked here ------------------------------------------------


def _amount(text: Any) -> str:
    try:
        Amount.parse(_str(text, "an amount with a unit, such as '1000 sat' or '2.50 usd'"))
    except AmountError as exc:
        raise ValueError(f"expected an amount with a unit, such as '1000 sat' or '2.50 usd' ({exc})") from None
    return str(text)


def _duration(text: Any) -> str:
    _sliding(_str(text, _A_DURATION), _A_DURATION)
    return str(text)


def _budget_window(text: Any) -> str:
    expected = "session, day, week, month or a duration such as 1h or 24h"
    if _str(text, expected) not in ("session", "day", "week", "month"):
        _sliding(text, expected)
    return str(text)


_A_DURATION = "a duration such as 30s, 5m, 1h, 24h or 7d"


def _sliding(text: str, expected: str) -> None:
    try:
        window = Window.sliding(text)
    except (LedgerError, ValueError):  # ValueError: more digits than Python reads as an int
        raise ValueError(f"expected {expected}") from None
    if window.length_us > MAX_DURATION_DAYS * 86_400 * 1_000_000:
        raise ValueError(f"{text.strip()} is too long: at most {MAX_DURATION_DAYS}d (about 10 years)")


RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
RATE_WINDOW = {"second": "1s", "minute": "1m", "hour": "1h", "day": "1d"}


def _rate(text: Any) -> str:
    match = RATE.match(_str(text, "a rate such as 10/minute"))
    count = match.group(1).lstrip("0") if match is not None else ""
    if match is None or not count:
        raise ValueError("expected a rate such as 10/minute (N/second, N/minute, N/hour or N/day, N ≥ 1)")
    if len(count) > len(str(MAX_COUNT)) or int(count) > MAX_COUNT:
        raise ValueError(f"{count} calls is too many: at most {MAX_COUNT} per {match.group(2)}")
    return str(text)


REPEAT = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")
_A_REPEAT = "a repeat limit such as 3/10m (N purchases of one resource per duration, N ≥ 1)"


def repeat_parts(text: str) -> tuple[int, str]:
    """A validated `repeat_limit` as (N, the window's duration): `3/10m` → (3, "10m")."""
    match = REPEAT.match(text)
    assert match is not None  # validated
    return int(match.group(1)), RATE_WINDOW.get(match.group(2), match.group(2))


def _repeat(text: Any) -> str:
    match = REPEAT.match(_str(text, _A_REPEAT))
    count = match.group(1).lstrip("0") if match is not None else ""
    if match is None or not count:
        raise ValueError(f"expected {_A_REPEAT}")
    if len(count) > len(str(MAX_COUNT)) or int(count) > MAX_COUNT:
        raise ValueError(f"{count} purchases is too many: at most {MAX_COUNT}")
    _sliding(RATE_WINDOW.get(match.group(2), match.group(2)), _A_REPEAT)
    return str(text)


def _timezone(text: Any) -> str:
    try:
        ZoneInfo(_str(text, "an IANA time zone such as UTC or Europe/Paris"))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("expected an IANA time zone such as UTC or Europe/Paris") from None
    return str(text)


_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _clock_time(text: Any) -> str:
    if _CLOCK.match(_str(text, 'a time of day such as "23:55"')) is None:
        raise ValueError('expected a time of day HH:MM, such as "23:55" (quote it in YAML)')
    return str(text)


def _webhook(text: Any) -> str:
    parts = urlsplit(_str(text, "an http:// or https:// URL"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    return str(text)


def _regex(text: Any) -> str:
    try:
        pattern(_str(text, "a regular expression (RE2 syntax)"))
    except re2.error as exc:
        raise ValueError(_re2_refusal(exc)) from None
    return str(text)


@cache
def pattern(text: str) -> re2._Regexp[str]:
    """`text` compiled by RE2, which matches in time linear in the string (no backtracking).

    Raises:
        re2.error: a construct RE2 does not have (backreferences, lookaround, ...)."""
    return re2.compile(text, _RE2_OPTIONS)


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern on stderr
    options.never_capture = True  # only whether it matches is read
    return options


_RE2_OPTIONS = _re2_options()

# What RE2 refuses that Python's `re` (and PCRE) take, by RE2's complaint: (what it is, how to do
# without it). RE2 has none of them because they need backtracking.
_NOT_IN_RE2 = [
    (r"invalid escape sequence: \\[1-9]", "backreferences (\\1 to \\9)", "match the text itself"),
    (r"invalid escape sequence: \\[kg]", "backreferences (\\k, \\g)", "match the text itself"),
    (r"invalid perl operator: \(\?P$", "named backreferences (?P=name)", "match the text itself"),
    (r"invalid escape sequence: \\Z", "\\Z", "write \\z (the end of the text)"),
    (r"invalid perl operator: \(\?[=!]", "lookahead (?=...) or (?!...)", "split the test into several conditions"),
    (r"invalid perl operator: \(\?<[=!]", "lookbehind (?<=...) or (?<!...)", "split the test into several conditions"),
    (r"bad repetition operator: ([*+?]|\{[\d,]*\})\+$", "possessive quantifiers (++, *+, ?+, {n}+)", "drop the last +"),
    (r"invalid perl operator: \(\?>", "atomic groups (?>...)", "write (?:...)"),
    (r"invalid perl operator: \(\?#", "comments (?#...)", "put the comment in the policy file"),
    (r"invalid perl operator: \(\?\(", "conditionals (?(...)...)", "split the test into several conditions"),
    (r"invalid perl operator: \(\?x", "the verbose flag (?x)", "write the pattern without spaces and comments"),
    (r"invalid perl operator: \(\?", "this group or flag", "use the flags i, m, s and U only"),
    (r"invalid repetition size", "counts above 1000", "count to at most 1000 (nested counts multiply)"),
    (r"pattern too large", "patterns this large", "write a smaller pattern"),
]


def _re2_refusal(exc: re2.error) -> str:
    """RE2's complaint about a pattern in words: which construct, where, and how to do without it."""
    raw = exc.args[0] if exc.args else ""
    message = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    for complaint, what, instead in _NOT_IN_RE2:
        if re.match(complaint, message):
            return f"RE2 does not take {what} ({message}): {instead}"
    return f"not a valid regular expression (RE2 syntax): {message}"


def _arg_path(text: Any) -> str:
    parts = path_parts(_str(text, "an argument path such as url or args.headers.authorization"))
    if not parts or any(not p for p in parts):
        raise ValueError("expected an argument path such as url or args.headers.authorization")
    return str(text)


def _finite(value: Any) -> Any:
    # Said here: a union of int and float would first complain that .inf is not an integer.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _str(value: Any, expected: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {expected}; got {type(value).__name__}")
    return value


AmountText = Annotated[str, BeforeValidator(_amount), Field(examples=["1000 sat", "2.50 usd"])]
Duration = Annotated[str, BeforeValidator(_duration), Field(examples=["5m", "1h"])]
BudgetWindow = Annotated[str, BeforeValidator(_budget_window), Field(examples=["session", "day", "24h"])]
RateText = Annotated[str, BeforeValidator(_rate), Field(examples=["10/minute"])]
RepeatText = Annotated[str, BeforeValidator(_repeat), Field(examples=["3/10m"])]
ArgPath = Annotated[str, BeforeValidator(_arg_path), Field(examples=["url", "args.headers.authorization"])]
Scope = Literal["session", "identity", "global"]
Number = Annotated[StrictInt | FiniteFloat | Decimal, BeforeValidator(_finite)]
Scalar = Annotated[str | StrictInt | FiniteFloat | StrictBool | None, BeforeValidator(_finite)]


# --- exchange rates (`rates:`) ---------------------------------------------------------------------------

# Rates guard assumes unless the policy names the unit: stablecoins at their peg. Never a rate between
# Lightning and dollars: that one moves, and only the operator may write it.
DEFAULT_RATES = {"usdc": "1 usd", "usdt": "1 usd"}
_RATE_FIGURE = re.compile(r"^\s*(\d{1,15}(?:\.\d{1,15})?)\s+(\S+)\s*$")
# Units of money a rate may name, as written in a policy: Lightning, dollars, stablecoins.
MONEY_WORDS = ("sat", "msat", "usd", "usd_micro", "usdc", "usdt", "eurc")


def _money_unit(word: Any) -> str:
    """A unit of money a rate may name: `sat`, `usd`, `usdc`...; a server's credits and tokens are not."""
    if _str(word, f"a unit of money ({', '.join(MONEY_WORDS)})") not in MONEY_WORDS:
        raise ValueError(f"{word!r} is not a unit of money a rate converts: expected one of {', '.join(MONEY_WORDS)}")
    return str(word)


def _exchange_rate(text: Any) -> str:
    match = _RATE_FIGURE.match(_str(text, "what one unit is worth, such as '1 usd' or '0.00095 usd'"))
    if match is None:
        raise ValueError("expected what one unit is worth: a number and a unit, such as '1 usd' or '0.00095 usd'")
    _money_unit(match.group(2))
    if Decimal(match.group(1)) == 0:
        raise ValueError("a rate must be more than zero: leave the unit out to count nothing in it")
    return str(text)


def _base(word: str) -> tuple[str, Fraction]:
    """The unit families convert in (Lightning counts in sat) and how many of it one `word` is."""
    one = Amount.parse(f"1 {word}")
    return ("sat", Fraction(one.value, 1000)) if one.unit == "msat" else (one.unit, Fraction(one.value))


def exchange_rates(written: dict[str, str]) -> Rates:
    """The ledger's `Rates` from a policy's `rates:` (each entry: what one of a unit is worth in another)
    with `DEFAULT_RATES` for the units it does not name, every pair that follows included (`sat: 0.00095
    usd` and the default `usdc: 1 usd` also rate sat in usdc). Exact fractions: no floats.

    Raises:
        ValueError: an entry rates a unit against itself or its own family (sat, msat), or two entries
            contradict each other (directly or through others), naming them."""
    named = {word for source, text in written.items() for word in (source, text.split()[-1])}
    entries = [(s, t, f"{s}: {t} (a default)") for s, t in DEFAULT_RATES.items() if s not in named]
    entries += [(s, t, f"{s}: {t}") for s, t in written.items()]
    worth: dict[str, tuple[str, Fraction]] = {}  # unit -> (anchor, how many anchor units one of it is)
    joined: dict[str, list[str]] = {}  # anchor -> the entries that rated its family, for errors
    for source, text, entry in entries:
        figure, word = text.split()
        (a, a_scale), (b, b_scale) = _base(source), _base(word)
        if a == b:
            raise ValueError(f"{entry} rates a unit against itself: {source} and {word} convert by themselves")
        ratio = Fraction(Decimal(figure)) * b_scale / a_scale  # how many b one a is
        a_anchor, a_worth = worth.setdefault(a, (a, Fraction(1)))
        b_anchor, b_worth = worth.setdefault(b, (b, Fraction(1)))
        if a_anchor == b_anchor:
            if a_worth != ratio * b_worth:
                others = ", ".join(joined[a_anchor])
                raise ValueError(f"{entry} contradicts {others}: they set different rates between {source} and {word}")
            continue
        # b's family of rated units joins a's: each of them is now worth some a_anchor.
        scale = a_worth / (ratio * b_worth)
        for unit, (anchor, value) in list(worth.items()):
            if anchor == b_anchor:
                worth[unit] = (a_anchor, value * scale)
        joined[a_anchor] = [*joined.get(a_anchor, []), *joined.pop(b_anchor, []), entry]
    table = {
        (x, y): x_worth / y_worth
        for x, (x_anchor, x_worth) in worth.items()
        for y, (y_anchor, y_worth) in worth.items()
        if x < y and x_anchor == y_anchor
    }
    return Rates(table)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the file ----------------------------------------------------------------------------------------


class Condition(_Spec):
    """One argument condition. Give `arg` and exactly one test."""

    arg: ArgPath = Field(description="Argument path: `url`, `headers.authorization` (an `args.` prefix is optional).")
    equals: Scalar | list[Any] | dict[str, Any] = Field(default=None, description="Equal to this value.")
    not_equals: Scalar | list[Any] | dict[str, Any] = Field(default=None, description="Not equal to this value.")
    one_of: list[Scalar] | None = Field(default=None, description="Equal to one of these values.")
    not_one_of: list[Scalar] | None = Field(default=None, description="Equal to none of these values.")
    matches: Annotated[str, BeforeValidator(_regex)] | None = Field(
        default=None, description="A string in which the regular expression (RE2 syntax) finds a match."
    )
    contains: Scalar = Field(default=None, description="A string or list containing this value.")
    lt: Number | None = None
    lte: Number | None = None
    gt: Number | None = None
    gte: Number | None = None
    exists: StrictBool | None = Field(default=None, description="true: the argument is present; false: absent.")
    reason: str | None = Field(default=None, description="Text the agent sees when this condition fails.")

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [name for name in CONDITION_TESTS if name in self.model_fields_set]
        if len(tests) != 1:
            raise ValueError(
                f"a condition needs exactly one of {', '.join(CONDITION_TESTS)}"
                + (f"; got {', '.join(tests)}" if tests else "")
            )
        return self

    @property
    def test(self) -> str:
        return next(name for name in CONDITION_TESTS if name in self.model_fields_set)


CONDITION_TESTS = (
    "equals",
    "not_equals",
    "one_of",
    "not_one_of",
    "matches",
    "contains",
    "lt",
    "lte",
    "gt",
    "gte",
    "exists",
)


class RateLimitRule(_Spec):
    limit: RateText = Field(description="N/second, N/minute, N/hour or N/day (a sliding window).")
    scope: Scope = Field(default="session", description="Whose calls count together.")


class Quota(_Spec):
    """A named durable counter (Intercept's `state`): each call adds `increment` (or the number at
    `increment_from`); a call is refused when the counter would pass `max` within the window."""

    counter: str = Field(min_length=1)
    max: StrictInt = Field(ge=0, le=MAX_COUNT)
    window: Duration | Literal["second", "minute", "hour", "day"]
    increment: StrictInt = Field(default=1, ge=0, le=MAX_COUNT)
    increment_from: ArgPath | None = None
    scope: Scope = "global"


class ToolRule(_Spec):
    """What the guard does with calls to one tool (or, under `"*"`, every tool)."""

    action: Literal["allow", "deny", "approve"] = Field(
        default="allow", description="approve: the call needs a human's `guard approvals approve ID`."
    )
    reason: str | None = Field(default=None, description="Text the agent sees when this rule denies a call.")
    hidden: StrictBool = Field(default=False, description="Hide from tools/list (and deny).")
    when: list[Condition] = Field(default_factory=list, description="Argument conditions; all must hold.")
    rate_limit: RateText | RateLimitRule | list[RateText | RateLimitRule] | None = None
    quotas: list[Quota] = Field(default_factory=list)
    pays: StrictBool | Literal["x402"] = Field(
        default=False,
        description=(
            "The tool spends money: it needs a price and a budget. `x402`: only its calls that carry an x402"
            " payment in _meta pay (priced by it); one without moves nothing and is neither held nor denied."
        ),
    )
    price: AmountText | None = Field(default=None, description="Fixed price of one call.")
    price_from: ArgPath | None = Field(default=None, description="Argument holding the price (with price_unit).")
    price_unit: str | None = Field(default=None, description="Unit of the number at price_from: sat, msat, usd...")
    max_price: AmountText | None = Field(default=None, description="Per-call cap; the price bound when none is known.")
    repeat_limit: RepeatText | None = Field(
        default=None,
        description=(
            "The loop breaker: N/duration (3/10m). A session may buy one resource (its URL, else its payment"
            " hash, else the call's arguments) at most N times per sliding window; needs pays: true."
        ),
    )
    shadow: StrictBool = Field(
        default=False,
        description=(
            "Shadow this rule: what it would deny (action deny, hidden, conditions, rate limits, quotas,"
            " repeat_limit, max_price) is forwarded and recorded as a would-deny. Never a freeze, never"
            " 'no price, no pay'."
        ),
    )

    @model_validator(mode="after")
    def _price_parts(self) -> ToolRule:
        priced = [k for k in ("price", "price_from", "max_price", "repeat_limit") if getattr(self, k) is not None]
        if priced and not self.pays:
            # A price on a tool not marked as paying would silently leave it outside every budget.
            raise ValueError(f"{', '.join(priced)} needs pays: true (a rule replaces a preset's rule whole)")
        if self.price is not None and self.price_from is not None:
            raise ValueError("give either price or price_from, not both")
        if (self.price_from is None) != (self.price_unit is None):
            raise ValueError("price_from and price_unit go together")
        if self.price_unit is not None:
            try:
                Amount.parse(f"1 {self.price_unit}")
            except AmountError as exc:
                raise ValueError(f"price_unit: {exc}") from None
        return self


class BudgetSpec(_Spec):
    name: str = Field(min_length=1)
    limit: AmountText
    scope: Literal["session", "identity", "server", "global"] = "session"
    window: BudgetWindow = "session"
    tools: list[str] | None = Field(default=None, description="Paying tools it covers (default: every paying tool).")
    include_external: StrictBool = Field(
        default=False, description="Also count spend seen only in a balance (a drop guard's payments do not explain)."
    )
    shadow: StrictBool = Field(
        default=False,
        description="Shadow this budget: a payment over it is still reserved and settled, recorded as a would-deny.",
    )


class Balances(_Spec):
    stale_after: Duration = "5m"
    on_stale: Literal["refresh", "deny"] = "refresh"
    refresh_every: Duration | None = "2m"


ReportFormat = Literal["md", "html", "json", "csv"]


class ReportSpec(_Spec):
    at: Annotated[str, BeforeValidator(_clock_time)] | None = Field(
        default=None,
        description='When `guard run` writes the nightly report, "HH:MM" in the policy\'s timezone (default: never).',
    )
    dir: str | None = Field(default=None, description="Where reports go (default: $XDG_DATA_HOME/guard/reports).")
    formats: list[ReportFormat] = Field(default_factory=lambda: list[ReportFormat](["md"]), min_length=1)


class AlertsSpec(_Spec):
    webhook: Annotated[str, BeforeValidator(_webhook)] = Field(
        description="Where alert events are POSTed as JSON (never logged: it may carry a secret)."
    )
    thresholds: list[Annotated[Decimal, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [Decimal("0.5"), Decimal("0.8"), Decimal("1.0")],
        description="Fractions of a budget's limit that send an alert, once per budget and window period.",
    )
    in_doubt: StrictBool = Field(default=True, description="Also alert on each payment newly in doubt.")
    approvals: StrictBool = Field(
        default=True,
        description="Also send `approval.requested` for each call waiting for a human's approval, with the command"
        " that approves it.",
    )
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = Field(
        default=None,
        description="The environment variable holding the secret (`whsec_` + base64, Standard Webhooks) that signs"
        " each event (`webhook-id`, `webhook-timestamp`, `webhook-signature` headers); `guard run` refuses to start"
        " when it is unset. Without it, events are sent unsigned.",
    )


_CAIP2_EVM = re.compile(r"^eip155:[1-9][0-9]{0,18}$")


class ChainSpec(_Spec):
    """Where guard asks an EVM chain what became of an x402 payment in doubt (the token contract's
    `authorizationState(payer, nonce)`, an `eth_call`)."""

    rpc: Annotated[str, BeforeValidator(_webhook)] = Field(
        description="The chain's JSON-RPC URL (http:// or https://; never logged: it may carry an API key)."
    )
    timeout: Annotated[Decimal, Field(gt=0, le=120)] = Field(
        default=Decimal(10), description="Seconds to wait for an answer; a node that does not answer resolves nothing."
    )


def _chains(chains: Any) -> Any:
    if isinstance(chains, dict):
        for network in chains:
            if not isinstance(network, str) or _CAIP2_EVM.match(network) is None:
                raise ValueError(f"{network!r} is not an EVM network in CAIP-2 form, such as eip155:8453 (Base)")
    return chains


class Approvals(_Spec):
    expire_after: Duration = Field(default="1h", description="An undecided or unused approval lapses after this.")


class AuditSpec(_Spec):
    """What the audit trail keeps of each call besides its decision."""

    arguments: Literal["none", "redacted"] = Field(
        default="none",
        description=(
            "redacted: keep each call's arguments in its call event, secrets removed (macaroons, preimages, keys,"
            " signatures, NWC URIs...), so `guard policy simulate` can evaluate a candidate's argument"
            " conditions. none: only a digest of them."
        ),
    )


class PolicySpec(_Spec):
    """The guard's policy file (version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="guard policy")

    version: Literal[1] = Field(description="Always 1.")
    description: str | None = None
    preset: str | None = Field(default=None, description="Start from a shipped preset (policies/NAME.yaml).")
    default: Literal["deny", "allow"] = Field(default="deny", description="What happens to tools no rule names.")
    mode: Literal["enforce", "shadow"] = Field(
        default="enforce",
        description=(
            "shadow: every decision is made and recorded, but what would be denied is forwarded and recorded"
            " as a would-deny (money still reserved and settled). Freezes and 'no price, no pay' always refuse."
        ),
    )
    server: str | None = Field(default=None, description="The upstream's name for budgets with scope: server.")
    timezone: Annotated[str, BeforeValidator(_timezone)] = "UTC"
    budgets: list[BudgetSpec] = Field(default_factory=list)
    rates: dict[Annotated[str, BeforeValidator(_money_unit)], Annotated[str, BeforeValidator(_exchange_rate)]] = Field(
        default_factory=dict,
        description=(
            "What one unit of money is worth in another, so that a budget in one unit counts payments in"
            " another: `sat: 0.00095 usd`. Exact decimals; usdc and usdt count as 1 usd unless named here;"
            " a rate between sat and usd is never assumed. A payment's charge is converted when it is"
            " reserved and kept: editing a rate changes later payments only."
        ),
        examples=[{"usdc": "1 usd", "sat": "0.00095 usd"}],
    )
    assets: dict[str, str] = Field(
        default_factory=dict,
        description="x402 assets the guard should price, by contract address: the unit (usdc, eurc, usdt, ...).",
    )
    balances: Balances = Field(default_factory=Balances)
    chains: Annotated[dict[str, ChainSpec], BeforeValidator(_chains)] = Field(
        default_factory=dict,
        description="EVM chains by CAIP-2 id (eip155:8453) whose node settles x402 payments in doubt: {rpc: URL}.",
    )
    approvals: Approvals = Field(default_factory=Approvals)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    alerts: AlertsSpec | None = None
    expose_budget_tool: StrictBool = Field(
        default=False, description="List guard's own read-only tool `guard-budget`: the caller's budgets."
    )
    tools: dict[str, ToolRule] = Field(default_factory=dict)

    @field_validator("assets")
    @classmethod
    def _asset_units(cls, assets: dict[str, str]) -> dict[str, str]:
        for address, unit in assets.items():
            try:
                Amount.parse(f"1 {unit}")
            except AmountError as exc:
                raise ValueError(f"asset {address}: {exc}") from None
        return assets

    @field_validator("rates")
    @classmethod
    def _consistent_rates(cls, rates: dict[str, str]) -> dict[str, str]:
        exchange_rates(rates)  # raises, naming the entries, when they contradict each other
        return rates

    @field_validator("tools")
    @classmethod
    def _one_rule_per_tool(cls, tools: dict[str, ToolRule]) -> dict[str, ToolRule]:
        seen: dict[str, str] = {}
        for name in tools:
            same = seen.setdefault(folded(name), name)
            if same != name:
                how = (
                    "kebab and snake case match"
                    if spelling(same) == spelling(name)
                    else "they differ only in case, width, dashes or spaces: an upstream may run them as one"
                )
                raise ValueError(f"{same!r} and {name!r} name the same tool ({how})")
        return tools

    @field_validator("budgets")
    @classmethod
    def _unique_budgets(cls, budgets: list[BudgetSpec]) -> list[BudgetSpec]:
        names = [b.name for b in budgets]
        if dups := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"budget names must be unique; repeated: {', '.join(dups)}")
        return budgets


def path_parts(path: str) -> list[str]:
    """The keys of an argument path (`args.headers.authorization` → headers, authorization)."""
    parts = path.split(".")
    return parts[1:] if parts[0] == "args" and len(parts) > 1 else parts


def seconds(duration: str) -> float:
    """A policy duration (`5m`, `1h`) in seconds."""
    return Window.sliding(duration).length_us / 1_000_000


def json_schema() -> JSON:
    """The published JSON Schema of the policy file (`policies/policy.schema.json`)."""
    schema = PolicySpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/guard-mcp/guard/policies/policy.schema.json"
    return schema
