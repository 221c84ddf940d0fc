"""`guard init`: ask an upstream for its tools and write a starting policy for it.

Tools a shipped preset knows are left to the preset (listed as comments); every other tool gets an
entry that denies it, with its description and annotations as comments, so a person reviews it
before an agent can call it. The text is written by hand (YAML has no comment-preserving dumper in
PyYAML); every value that comes from the upstream is quoted by `yaml.safe_dump` or flattened into a
comment, and the result is loaded back before it is written.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import anyio
import typer
import yaml

from guard.cli.exits import Status, fail
from guard.cli.options import UpstreamCommand, UpstreamUrl, default_policy_path, upstream_spec
from guard.errors import ConfigError, PolicyError, UpstreamStartError
from guard.policy.files import parse, preset_text, presets
from guard.policy.rules import Policy
from guard.redact import redact

if TYPE_CHECKING:
    import mcp_types as types

    from guard.proxy.upstream import UpstreamSpec

# How long connecting and listing may take by default (an `npx -y` upstream may download first).
DEFAULT_TIMEOUT_S = 60.0
# Pages of tools/list followed at most (a server repeating cursors must not loop forever).
MAX_PAGES = 1000
# Descriptions are trimmed to their first line and about this many characters.
DESCRIPTION_CHARS = 100
# The annotations shown, in this order, by their wire names.
ANNOTATIONS = ("title", "readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")


@dataclass(frozen=True)
class Listing:
    """What the upstream said about itself."""

    tools: list[types.Tool]
    server: str | None  # "name version" from the handshake, when it gave one


def init(
    command: UpstreamCommand = None,
    upstream: UpstreamUrl = None,
    preset: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--preset", metavar="NAME", help="Start from this shipped preset (default: detected)."),
    ] = None,
    out: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="Where to write (default: $XDG_CONFIG_HOME/guard/policy.yaml); `-` prints to stdout.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="How long starting and listing may take.")
    ] = DEFAULT_TIMEOUT_S,
) -> None:
    """Write a starting policy from an upstream's tools: `guard init -- CMD [ARGS...]` or `guard init --upstream URL`.

    Tools a preset knows follow the preset; every other tool is denied until you allow it."""

    spec = upstream_spec(command, upstream)
    if preset is not None and preset not in presets():
        raise ConfigError(f"unknown preset {preset!r}; shipped presets: {', '.join(presets()) or '(none)'}")
    if timeout <= 0:
        raise ConfigError(f"--timeout {timeout}: expected a positive number of seconds")
    path = None if out == "-" else Path(out) if out is not None else default_policy_path()
    if path is not None:
        _check_writable(path, force)
    spec.check()
    listing = anyio.run(_list_tools, spec, timeout)

    tools = _unique(listing.tools)
    known = _preset_policies([preset] if preset is not None else presets(), strict=preset is not None)
    chosen = preset if preset is not None else _detect(tools, known)
    base = known.get(chosen) if chosen is not None else None
    from_preset = [t for t in tools if base is not None and base.rule_for(t.name) is not None]
    governed = {t.name for t in from_preset}
    unknown = [t for t in tools if t.name not in governed and t.name != "*"]
    text = render(spec.label, listing.server, tools, chosen, base)
    _verify(text, str(path or "<stdout>"), from_preset, unknown)

    if path is None:
        typer.echo(text, nl=False)
    else:
        try:
            _write(path, text, force)
        except FileExistsError:  # written since `_check_writable` looked
            raise ConfigError(_exists_message(path)) from None
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None

    summary = f"guard init: {len(tools)} tool{'s' if len(tools) != 1 else ''} from {spec.label}"
    if chosen is not None:
        detected = "" if preset is not None else " (detected)"
        summary += f"; {len(from_preset)} governed by preset {chosen}{detected}"
    summary += f"; {len(unknown)} unknown, denied until you allow them"
    typer.echo(summary, err=True)
    if chosen is not None and not from_preset:
        typer.echo(f"guard init: warning: preset {chosen} knows none of the upstream's tools", err=True)
    if path is None:
        typer.echo("guard init: printed the policy to stdout", err=True)
    else:
        flag = "" if path == default_policy_path() else f" --policy {path}"
        typer.echo(f"guard init: wrote {path}; review it, then run `guard run{flag} -- ...`", err=True)


# --- asking the upstream --------------------------------------------------------------------------------


async def _list_tools(spec: UpstreamSpec, limit_s: float) -> Listing:
    """Every tool the upstream lists, following pagination cursors.

    Raises:
        UpstreamStartError: it cannot be started or reached, or did not answer in time.
    """
    from mcp import Client  # the MCP SDK: loaded by the commands that reach an upstream

    from guard.proxy.upstream import StdioUpstream, client_target, describe

    stdio = isinstance(spec, StdioUpstream)
    shown = f"`{spec.label}`" if stdio else spec.label
    server = client_target(spec)
    tools: list[types.Tool] = []
    try:
        with anyio.fail_after(limit_s):
            async with Client(server, cache=None) as client:
                cursor: str | None = None
                seen: set[str] = set()
                for _ in range(MAX_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor or cursor in seen:
                        break
                    seen.add(cursor)
                info = client.server_info
    except TimeoutError:
        raise UpstreamStartError(f"upstream {shown} did not list its tools within {limit_s:g} s") from None
    except OSError as exc:
        raise UpstreamStartError(f"cannot start upstream {shown}: {exc.strerror or exc}") from None
    except Exception as exc:  # the SDK's task groups wrap transport and protocol errors alike
        story = redact(describe(exc))
        if stdio:
            story += " (its stderr, if any, is above)"
        raise UpstreamStartError(f"cannot list the tools of upstream {shown}: {story}") from None
    server_name = " ".join(filter(None, [info.name, info.version])) if info is not None else None
    return Listing(tools, server_name or None)


def _unique(tools: list[types.Tool]) -> list[types.Tool]:
    """The first tool of each name (a second one would be a duplicate key)."""
    first: dict[str, types.Tool] = {}
    for tool in tools:
        first.setdefault(tool.name, tool)
    return list(first.values())


# --- presets -------------------------------------------------------------------------------------------


def _preset_policies(names: list[str], *, strict: bool) -> dict[str, Policy]:
    """The named presets, loaded. A shipped preset that does not load is a bug: exit 1 when it was
    asked for (`strict`), else leave it out of detection with a warning."""
    loaded: dict[str, Policy] = {}
    for name in names:
        try:
            loaded[name], _ = parse(preset_text(name), f"<preset {name}>")
        except (PolicyError, OSError) as exc:
            if strict:
                fail(Status.FAILED, f"the shipped preset {name} does not load (a bug in guard): {exc}")
            typer.echo(f"guard init: warning: skipping the shipped preset {name}, which does not load: {exc}", err=True)
    return loaded


def _detect(tools: list[types.Tool], known: dict[str, Policy]) -> str | None:
    """The preset that knows the most of the upstream's tools (kebab and snake case alike), if any
    knows one; ties go to the preset whose own tools are the most fully present."""
    best: tuple[int, float, str] | None = None
    for name, policy in sorted(known.items()):
        covered = sum(policy.rule_for(t.name) is not None for t in tools)
        size = max(1, len([k for k in policy.spec.tools if k != "*"]))
        score = (covered, covered / size, name)
        if covered and (best is None or score[:2] > best[:2]):
            best = score
    return best[2] if best is not None else None


# --- the text ------------------------------------------------------------------------------------------


def render(label: str, server: str | None, tools: list[types.Tool], preset: str | None, base: Policy | None) -> str:
    """The policy file's text."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        _comment(f"Generated by guard init from {label} on {when}."),
        *([_comment(f"Upstream: {server}, {len(tools)} tools.")] if server else []),
    ]
    if preset is not None:
        lines.append(_comment(f"Tools the preset {preset} knows follow it (listed as comments under tools:)."))
    lines += [
        f"# {'Every other' if preset is not None else 'Every'} tool is denied: read its description, then set"
        " `action: allow` (or `approve`)",
        "# and drop the reason. A tool that spends money also needs `pays: true`, a price or max_price, and a budget.",
        "# Check the file with `guard policy check FILE`.",
        "version: 1",
        "default: deny",
    ]
    if preset is not None:
        lines.append(f"preset: {_scalar(preset)}")
    governed = [(t, base.rule_for(t.name)) for t in tools] if base is not None else [(t, None) for t in tools]
    entries = [t for t, rule in governed if rule is None and t.name != "*"]
    lines.append("tools:" if entries else "tools: {}")
    for tool, found in governed:
        if found is not None:
            where, rule = found
            key = where.removeprefix("tools.")
            named = "" if key == tool.name else f" as {key}"
            lines.append("  " + _comment(f"{tool.name}: from preset {preset}{named} ({_summary(rule)})"))
    for tool in (t for t, rule in governed if rule is None and t.name == "*"):
        lines.append("  " + _comment(f"{tool.name}: a policy cannot name this tool; default: deny denies it"))
    for tool in entries:
        lines.append("")
        lines.append("  " + _comment(f"{tool.name}: {_description(tool)}"))
        if hints := _annotations(tool):
            lines.append("  " + _comment(f"  {hints}"))
        lines.append(f"  {_scalar(tool.name)}:")
        lines.append("    action: deny")
        reason = f"{tool.name} has not been reviewed: the starting policy from guard init denies it"
        lines.append(f"    reason: {_scalar(reason)}")
    return "\n".join(lines) + "\n"


def _summary(rule: Any) -> str:
    parts = ["hidden" if rule.hidden else str(rule.action)]
    if rule.pays:
        parts.append("pays")
    return ", ".join(parts)


def _description(tool: types.Tool) -> str:
    lines = [line.strip() for line in (tool.description or "").splitlines() if line.strip()]
    if not lines:
        return "(no description)"
    first = lines[0]
    if len(first) > DESCRIPTION_CHARS:
        first = first[: DESCRIPTION_CHARS - 1].rstrip() + "…"
    elif len(lines) > 1:
        first += " …"
    return first


def _annotations(tool: types.Tool) -> str:
    given: dict[str, Any] = {}
    if tool.annotations is not None:
        given = tool.annotations.model_dump(by_alias=True, exclude_none=True, mode="json")
    if "title" not in given and tool.title:
        given["title"] = tool.title
    shown = [f"{key}: {_scalar(given[key])}" for key in ANNOTATIONS if key in given]
    return ", ".join(shown)


def _comment(text: str) -> str:
    """A one-line YAML comment: line breaks and characters YAML refuses become spaces."""
    flat = "".join(ch if ch.isprintable() else " " for ch in " ".join(text.splitlines()))
    return ("# " + flat).rstrip()


def _scalar(value: Any) -> str:
    """A YAML scalar on one line, quoted when it is a string (ASCII, escapes for the rest)."""
    style = '"' if isinstance(value, str) else None
    dumped = yaml.safe_dump(value, default_style=style, allow_unicode=False, width=sys.maxsize)
    return str(dumped).removesuffix("\n").removesuffix("\n...").strip()


# --- checking and writing -------------------------------------------------------------------------------


def _verify(text: str, file: str, from_preset: list[types.Tool], unknown: list[types.Tool]) -> None:
    """Exit 1 unless the text loads as a guard policy that governs the tools as intended (else a bug)."""
    try:
        policy, kind = parse(text, file)
    except PolicyError as exc:
        fail(Status.FAILED, f"the generated policy does not load (a bug in guard init):\n{exc}")
    wrong = [t.name for t in from_preset if policy.rule_for(t.name) is None]
    wrong += [t.name for t in unknown if policy.rule_for(t.name) is None or policy.refusal(t.name) is None]
    if kind != "guard" or wrong:
        which = ", ".join(wrong) or "its tools"
        fail(Status.FAILED, f"the generated policy does not govern {which} as meant (a bug in guard init)")


def _exists_message(path: Path) -> str:
    return f"{path} already exists: give --force to overwrite it, or --out PATH to write elsewhere"


def _check_writable(path: Path, force: bool) -> None:
    if path.is_dir():
        raise ConfigError(f"{path} is a directory: give --out a file path")
    if path.exists() and not force:
        raise ConfigError(_exists_message(path))


def _write(path: Path, text: str, force: bool) -> None:
    """Write `text` to `path`: never over an existing file without `force`; with it, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force:
        with path.open("x", encoding="utf-8") as file:
            file.write(text)
        return
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, path.stat().st_mode & 0o777)  # keep the replaced file's permissions
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
