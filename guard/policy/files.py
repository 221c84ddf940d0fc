"""Policy files: read YAML or JSON, recognise the format (guard's own, Intercept YAML, PolicyLayer
JSON), apply a preset, validate, and say exactly where a file is wrong (file, line, column, what was
expected). Every problem is a `PolicyError`; nothing else escapes `load`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from guard.errors import PolicyError, Problem
from guard.names import spelling
from guard.policy.model import PolicySpec
from guard.policy.rules import Policy
from guard.policy.seeds import Format, Untranslatable, detect, translate

# --- reading with positions ------------------------------------------------------------------------------


# Bounds on a policy file, far above what any policy needs: past them a file is a mistake or an attack
# on whoever reads it (a YAML "billion laughs" repeats an anchor's values through aliases).
MAX_FILE_BYTES = 256 * 1024  # 75 times the largest preset
MAX_DEPTH = 32  # nested mappings and lists, counting what aliases stand for
MAX_VALUES = 100_000  # every key, value and collection, counting each alias as what it repeats


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a later one would silently win) and integers too long
    for Python to read (which would raise a ValueError without a position)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return int(super().construct_yaml_int(node))
        except ValueError:
            raise yaml.constructor.ConstructorError(None, None, "a number too long to read", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


@dataclass(frozen=True)
class _Document:
    data: Any
    node: yaml.Node | None  # None when only a JSON parser could read it (no positions)
    file: str


def _read(text: str, file: str) -> _Document:
    if len(text) > MAX_FILE_BYTES:
        raise PolicyError([_too_large(file)])
    try:
        _check_yaml_shape(text, file)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
        return _Document(data, node, file)
    except yaml.MarkedYAMLError as exc:
        yaml_error = exc
    except yaml.YAMLError as exc:  # pragma: no cover - every parser error carries a mark
        raise PolicyError([Problem(file, 1, 1, "", f"not valid YAML or JSON: {exc}")]) from None
    # Some JSON (tabs for indentation, say) is not YAML: give JSON its own chance.
    if text.lstrip().startswith("{"):
        _check_json_depth(text, file)
        try:
            return _Document(json.loads(text), None, file)
        except json.JSONDecodeError as exc:
            raise PolicyError([Problem(file, exc.lineno, exc.colno, "", f"not valid JSON: {exc.msg}")]) from None
        except ValueError as exc:  # an integer too long for Python to read
            raise PolicyError([Problem(file, 1, 1, "", f"not valid JSON: {exc}")]) from None
    mark = yaml_error.problem_mark or yaml_error.context_mark
    what = " ".join(filter(None, [yaml_error.context, yaml_error.problem]))
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    raise PolicyError([Problem(file, line, column, "", f"not valid YAML: {what}")]) from None


def _too_large(file: str) -> Problem:
    return Problem(file, 1, 1, "", f"the file is larger than {MAX_FILE_BYTES // 1024} KiB, more than a policy needs")


@dataclass
class _Open:
    """A mapping or list being read by `_check_yaml_shape`."""

    anchor: str | None
    values_before: int
    deepest: int  # the deepest level reached inside it
    mapping: bool
    at_key: bool = True  # a mapping: the next node is a key
    key: str = "?"
    index: int = -1


def _check_yaml_shape(text: str, file: str) -> None:
    """Refuse a file nested deeper than MAX_DEPTH or holding more than MAX_VALUES values once its
    aliases are expanded, from the parser's events, before anything is built (the composer recurses
    per level; what aliases repeat is shared when built, but not when read).

    Raises:
        PolicyError: at the node that goes too deep or too far.
        yaml.MarkedYAMLError: not valid YAML.
    """
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, levels) of what it names
    stack: list[_Open] = []
    values = 0
    for event in yaml.parse(text, Loader=_Loader):
        level = len(stack)
        parent = stack[-1] if stack else None
        if parent is not None and not parent.mapping and not isinstance(event, yaml.CollectionEndEvent):
            parent.index += 1
        if isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            if done.anchor:
                sizes[done.anchor] = (values - done.values_before, done.deepest - level + 1)
            if stack:
                stack[-1].deepest = max(stack[-1].deepest, done.deepest)
                stack[-1].at_key = not stack[-1].at_key
            continue
        if isinstance(event, yaml.CollectionStartEvent):
            reach, added = level + 1, 1
        elif isinstance(event, yaml.AliasEvent):
            added, levels = sizes.get(event.anchor or "", (1, 0))  # an unknown anchor is the composer's error
            reach = level + levels
        elif isinstance(event, yaml.ScalarEvent):
            reach, added = level, 1
        else:
            continue
        values += added
        where = _event_path(stack)
        if reach > MAX_DEPTH:
            raise PolicyError([_event_problem(file, event, where, f"nested deeper than {MAX_DEPTH} levels")])
        if values > MAX_VALUES:
            repeated = (
                f" (with what aliases such as *{event.anchor} repeat)" if isinstance(event, yaml.AliasEvent) else ""
            )
            raise PolicyError([_event_problem(file, event, where, f"more than {MAX_VALUES} values{repeated}")])
        if parent is not None:
            parent.deepest = max(parent.deepest, reach)
            if parent.mapping and parent.at_key and isinstance(event, yaml.ScalarEvent):
                parent.key = event.value
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append(_Open(event.anchor, values - 1, reach, isinstance(event, yaml.MappingStartEvent)))
            continue
        if isinstance(event, yaml.ScalarEvent) and event.anchor:
            sizes[event.anchor] = (1, 0)
        if parent is not None:
            parent.at_key = not parent.at_key


def _event_path(stack: list[_Open]) -> str:
    """The dotted path of the node an event starts, as `_position` writes it."""
    parts = [(f".{frame.key}" if frame.mapping else f"[{frame.index}]") for frame in stack]
    return "".join(parts).removeprefix(".")


def _event_problem(file: str, event: yaml.Event, where: str, message: str) -> Problem:
    mark = event.start_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return Problem(file, line, column, where, message)


def _check_json_depth(text: str, file: str) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH before the parser (which recurses per level) reads it."""
    depth, in_string, escaped, line, line_start = 0, False, False, 1, 0
    for offset, char in enumerate(text):
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                message = f"nested deeper than {MAX_DEPTH} levels"
                raise PolicyError([Problem(file, line, offset - line_start + 1, "", message)])
        elif char in "]}":
            depth -= 1
        elif char == "\n":
            line, line_start = line + 1, offset + 1


def _position(document: _Document, loc: tuple[Any, ...], *, at_key: bool = False) -> tuple[int, int, str]:
    """Line, column and dotted path of the deepest node `loc` reaches (pydantic's union-member and
    validator tags in `loc` are skipped); with `at_key`, the position of the last key rather than its
    value. A file only JSON could read has no positions: line 1, column 1, but still the path."""
    node: Any = document.node
    data: Any = document.data
    path: list[str] = []
    mark = node.start_mark if node is not None else None
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
            if isinstance(node, yaml.MappingNode):
                key, node = next(((k, v) for k, v in node.value if k.value == str(part)), (None, None))
                mark = (key if at_key and key is not None else node).start_mark if node is not None else mark
            path.append(str(part))
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
            if isinstance(node, yaml.SequenceNode):
                node = node.value[part]
                mark = node.start_mark
            path.append(f"[{part}]")
    dotted = ".".join(path).replace(".[", "[")
    return (mark.line + 1, mark.column + 1, dotted) if mark else (1, 1, dotted)


def _problems(exc: ValidationError, document: _Document) -> list[Problem]:
    problems: dict[tuple[int, int], Problem] = {}
    for error in exc.errors(include_input=False, include_url=False):
        extra = error["type"] == "extra_forbidden"
        line, column, where = _position(document, tuple(error["loc"]), at_key=extra)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = f"missing key {error['loc'][-1]!r}"
        elif error["type"] == "extra_forbidden":
            message = f"unknown key {error['loc'][-1]!r}"
        elif error["type"] == "literal_error":
            message = message.replace("Input should be", "expected")
        elif message.startswith("Input should be"):
            message = message.replace("Input should be", "expected", 1)
        # One problem per place: a union's members each complain about the same node.
        problems.setdefault((line, column), Problem(document.file, line, column, where, message))
    return sorted(problems.values(), key=lambda p: (p.line, p.column))


# --- the seed formats -------------------------------------------------------------------------------------


def presets() -> list[str]:
    """The shipped presets' names."""
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("policies").iterdir() if p.name.endswith(".yaml")
    )


def preset_text(name: str) -> str:
    return resources.files("policies").joinpath(f"{name}.yaml").read_text()


def _with_preset(data: dict[str, Any], document: _Document, seen: tuple[str, ...]) -> dict[str, Any]:
    """The preset's policy with this file's keys over it: tools by name, budgets by name, the rest whole."""
    name = data.get("preset")
    if name is None:
        return data
    if not isinstance(name, str) or name not in presets():
        line, column, where = _position(document, ("preset",))
        raise PolicyError(
            [Problem(document.file, line, column, where, f"unknown preset {name!r}; shipped: {', '.join(presets())}")]
        )
    if name in seen:
        raise PolicyError([Problem(document.file, 1, 1, "preset", f"presets include each other: {' → '.join(seen)}")])
    base_document = _read(preset_text(name), f"<preset {name}>")
    base = _with_preset(dict(base_document.data), base_document, (*seen, name))
    merged = {**base, **{k: v for k, v in data.items() if k != "preset"}}
    mine = data.get("tools") or {}
    mine_names = {spelling(str(name)) for name in mine} if isinstance(mine, dict) else set()
    # A tool the file names (in either case style) replaces the preset's rule for it, whole.
    kept = {k: v for k, v in (base.get("tools") or {}).items() if spelling(k) not in mine_names}
    merged["tools"] = {**kept, **mine} if isinstance(mine, dict) else mine
    if "budgets" in base and "budgets" in data and isinstance(data["budgets"], list):
        mine = {b.get("name") for b in data["budgets"] if isinstance(b, dict) and isinstance(b.get("name"), str)}
        merged["budgets"] = [b for b in base["budgets"] if b.get("name") not in mine] + data["budgets"]
    merged["preset"] = name  # which server it was made for (guard starts a 402-mcp with its cap); `dump` leaves it out
    return merged


# --- loading ----------------------------------------------------------------------------------------------


def parse(text: str, file: str = "<policy>") -> tuple[Policy, Format]:
    """A policy from the text of a file in any of the three formats.

    Raises:
        PolicyError: with every problem's line and column.
    """
    document = _read(text, file)
    data = document.data
    if not isinstance(data, dict):
        raise PolicyError([Problem(file, 1, 1, "", "expected a mapping of policy keys (version, default, tools, ...)")])
    kind = detect(data)
    try:
        data = _with_preset(data, document, ()) if kind == "guard" else translate(kind, data)
        spec = PolicySpec.model_validate(data)
    except ValidationError as exc:
        # Seed formats are validated as written, so their errors point into the file too. A guard
        # file's errors inside a preset's keys point at the file's top.
        raise PolicyError(_problems(exc, document)) from None
    except Untranslatable as exc:
        line, column, where = _position(document, exc.loc)
        raise PolicyError([Problem(file, line, column, where, str(exc))]) from None
    return Policy(spec, file), kind


def load(path: str | Path) -> tuple[Policy, Format]:
    """A policy from a file. Raises `PolicyError`."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise PolicyError([_too_large(str(path))])
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError([Problem(str(path), 1, 1, "", f"cannot read the policy: {reason}")]) from None
    return parse(text, str(path))


def dump(spec: PolicySpec) -> str:
    """A policy as guard's own YAML (what `guard policy convert` prints)."""
    data = spec.model_dump(mode="json", exclude_unset=True, exclude={"preset"})  # already applied
    data = {"version": spec.version, "default": spec.default, **data}
    return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
