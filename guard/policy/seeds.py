"""The seed formats guard reads besides its own: Intercept's YAML and PolicyLayer's JSON. Each is validated
as written (so its mistakes are located in the file) and translated to guard's policy; what guard cannot
enforce as the seed means it is refused (`Untranslatable`, with where), never approximated.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from guard.policy.model import POLICY_VERSION

Format = Literal["guard", "intercept", "policylayer"]


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InterceptCondition(_Seed):
    path: str
    op: Literal["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists"]
    value: Any = None


class InterceptState(_Seed):
    counter: str
    window: Literal["minute", "hour", "day"]
    increment: StrictInt = 1
    increment_from: str | None = None


class InterceptRule(_Seed):
    name: str | None = None
    action: Literal["evaluate", "deny", "allow"] = "evaluate"
    conditions: list[InterceptCondition] = Field(default_factory=list)
    on_deny: str | None = None
    rate_limit: str | None = None
    state: InterceptState | None = None


class InterceptTool(_Seed):
    rules: list[InterceptRule] = Field(default_factory=list)


class InterceptPolicy(_Seed):
    version: Literal["1", 1] | None = None
    description: str | None = None
    default: Literal["allow", "deny"] = "allow"  # Intercept's own default
    hide: list[str] = Field(default_factory=list)
    tools: dict[str, InterceptTool] = Field(default_factory=dict)


class PolicyLayerLimit(_Seed):
    counter: str
    window: Literal["second", "minute", "hour", "day"]
    max: StrictInt = Field(ge=0)
    scope: Literal["grant", "session", "global"] = "grant"


class PolicyLayerTool(_Seed):
    action: Literal["allow", "deny"] = "allow"
    reason: str | None = None
    limits: list[PolicyLayerLimit] = Field(default_factory=list)


class PolicyLayerPolicy(_Seed):
    version: Literal["1"]
    default: Literal["allow", "deny"] = "deny"
    tools: dict[str, PolicyLayerTool] = Field(default_factory=dict)


_OPS = {
    "eq": "equals",
    "neq": "not_equals",
    "in": "one_of",
    "not_in": "not_one_of",
    "regex": "matches",
    **{op: op for op in ("lt", "lte", "gt", "gte", "contains", "exists")},
}
_SCOPES = {"global": "global", "session": "session", "identity": "identity", "grant": "identity"}


class Untranslatable(Exception):
    def __init__(self, loc: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def detect(data: Any) -> Format:
    """Which format a parsed file is in: Intercept's rules, PolicyLayer's string version, else guard's."""
    if not isinstance(data, dict):
        return "guard"
    tools = data.get("tools")
    entries = list(tools.values()) if isinstance(tools, dict) else []
    if "hide" in data or any(isinstance(e, dict) and "rules" in e for e in entries):
        return "intercept"
    policylayer_keys = {"version", "default", "tools"}
    if set(data) <= policylayer_keys and (
        data.get("version") == "1" or any(isinstance(e, dict) and "limits" in e for e in entries)
    ):
        return "policylayer"
    return "guard"


def _from_intercept(seed: InterceptPolicy) -> dict[str, Any]:
    tools: dict[str, Any] = {}
    for name, tool in seed.tools.items():
        counters = {r.state.counter: (i, r.state) for i, r in enumerate(tool.rules) if r.state is not None}
        rule: dict[str, Any] = {}
        for index, source in enumerate(tool.rules):
            loc = ("tools", name, "rules", index)
            if source.action == "deny":
                if source.conditions:
                    raise Untranslatable(loc, "a deny rule with conditions is not supported: write an evaluate rule")
                rule["action"] = "deny"
                if source.on_deny:
                    rule["reason"] = source.on_deny
                continue
            for number, condition in enumerate(source.conditions):
                cloc = (*loc, "conditions", number)
                if condition.path.startswith("state."):
                    rule.setdefault("quotas", []).append(_quota(condition, counters, name, cloc))
                    continue
                if not condition.path.startswith("args."):
                    raise Untranslatable((*cloc, "path"), "expected a path starting with args. or state.")
                value = condition.value if condition.op != "exists" else (condition.value is not False)
                entry = {"arg": condition.path, _OPS[condition.op]: value}
                if source.on_deny:
                    entry["reason"] = source.on_deny
                rule.setdefault("when", []).append(entry)
            if source.rate_limit is not None:
                rule.setdefault("rate_limit", []).append({"limit": source.rate_limit, "scope": "global"})
            if source.on_deny and "reason" not in rule:
                rule["reason"] = source.on_deny
        tools[name] = rule
    for name in seed.hide:
        tools.setdefault(name, {})["hidden"] = True
    policy: dict[str, Any] = {"version": POLICY_VERSION, "default": seed.default, "tools": tools}
    if seed.description:
        policy["description"] = seed.description
    return policy


def _quota(
    condition: InterceptCondition, counters: dict[str, tuple[int, InterceptState]], tool: str, loc: tuple[Any, ...]
) -> dict[str, Any]:
    """`state.<scope>.<counter> lt|lte N` with the same tool's `state` counting it: a quota."""
    parts = condition.path.split(".")
    if len(parts) != 3 or parts[1] not in _SCOPES:
        raise Untranslatable((*loc, "path"), "expected state.<global|session|identity>.<counter>")
    if condition.op not in ("lt", "lte") or isinstance(condition.value, bool) or not isinstance(condition.value, int):
        raise Untranslatable((*loc, "op"), "a state condition must be lt or lte a whole number")
    if parts[2] not in counters:
        raise Untranslatable((*loc, "path"), f"counter {parts[2]!r} is not counted by a state block of {tool}'s rules")
    _, state = counters[parts[2]]
    # Intercept checks the count before adding this call: `lt N` admits N calls, `lte N` N + 1.
    quota: dict[str, Any] = {
        "counter": parts[2],
        "max": condition.value + (1 if condition.op == "lte" else 0),
        "window": state.window,
        "scope": _SCOPES[parts[1]],
    }
    if state.increment_from is not None:
        quota["increment_from"] = state.increment_from
    elif state.increment != 1:
        quota["increment"] = state.increment
    return quota


def _from_policylayer(seed: PolicyLayerPolicy) -> dict[str, Any]:
    tools: dict[str, Any] = {}
    for name, tool in seed.tools.items():
        rule: dict[str, Any] = {}
        if tool.action == "deny":
            rule["action"] = "deny"
        if tool.reason:
            rule["reason"] = tool.reason
        if tool.limits:
            rule["quotas"] = [
                {"counter": limit.counter, "max": limit.max, "window": limit.window, "scope": _SCOPES[limit.scope]}
                for limit in tool.limits
            ]
        tools[name] = rule
    return {"version": POLICY_VERSION, "default": seed.default, "tools": tools}


def translate(kind: Literal["intercept", "policylayer"], data: dict[str, Any]) -> dict[str, Any]:
    """A seed file's data as guard's policy data.

    Raises:
        pydantic.ValidationError: the seed is not in its format (located like any policy error).
        Untranslatable: the seed says something guard cannot enforce as it means it."""
    if kind == "intercept":
        return _from_intercept(InterceptPolicy.model_validate(data))
    return _from_policylayer(PolicyLayerPolicy.model_validate(data))
