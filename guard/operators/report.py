"""The spend report (`guard report`, and the nightly job) in four formats, from `Ledger.report`.

- `md` and `html` are for people: amounts as `Amount` prints them (Lightning in sat when whole, else
  msat), times in the report's time zone. The HTML page is self-contained and works offline: its
  spend-over-time chart is an SVG drawn by pygal and embedded inline, without scripts; the page
  loads nothing from anywhere. Every value that comes from an agent or an upstream (session names,
  URLs, reasons) is escaped.
- `json` is a stable machine schema (`"report": "guard-spend", "version": 1`):

      {"report": "guard-spend", "version": 1,
       "period": {"start": ISO, "end": ISO, "timezone": "UTC"},   # [start, end)
       "generated_at": ISO, "nothing_spent": bool,
       "calls": {decision: count},                                 # allow, deny, error, external, topup, resolve
       "totals" | "by_session" | "by_identity" | "by_server" | "by_tool" | "by_hour" |
       "top_urls" | "top_origins": [SPEND, ...],
       "budgets": [{"budget", "scope", "unit", "spent", "in_doubt", "paid_unit", "paid", "paid_in_doubt",
                    "payments"}],
       "denials" | "rate_limit_hits": [{"rule", "count", "example"}],
       "stale_balance_denials": [{"tool", "balance", "count"}],
       "would_denials": [{"rule", "kind", "count", "example", "kept": [{"unit", "amount"}]}],
       "in_doubt": [{"hold", "amount", "unit", "tool", "session", "identity", "server", "resource",
                     "created", "age_s", "valid_before", "lapsed"}],
       "over_reservations": [{"hold", "reserved", "paid", "excess", "unit", "priced_by", "tool",
                              "session", "identity", "server", "resource", "created"}],
       "balance_drift": [{"key", "unit", "first", "first_seen", "last", "last_seen", "observations",
                          "fell_by", "counted", "external", "topups", "unexplained", "problem"}]}

  SPEND is {"key", "unit", "spent", "in_doubt", "external", "spent_with_external", "payments"}: `key`
  is the session, identity, server, tool, local hour (ISO 8601, `2026-11-21T13:00+01:00`), URL or
  origin (null: not recorded; totals: null). Amounts are integers in `unit`; Lightning amounts are in
  msat. `spent` is what the guard's payments settled at; `in_doubt` payments that may or may not have
  left (in full); `external` spend seen only in a balance; `spent_with_external` = spent + external. An
  `in_doubt` x402 payment names its signed authorization's `valid_before` (else null); `lapsed` is true
  once that has passed with no settlement. `over_reservations` are payments of the period settled above
  what was reserved for them (counted whole in the spend), amounts in the hold's unit; `priced_by` says
  what bounded the reservation. `budgets` says what the period's payments counted against each budget,
  one row per budget, scope and payment unit: `spent` and `in_doubt` in the budget's `unit` (converted
  at each reservation's rate), `paid` and `paid_in_doubt` in the payments' own `paid_unit`. Drift
  amounts may be negative (`fell_by` < 0: the balance rose). Lists are ordered: keys alphabetically
  (null last), hours in time, top URLs/origins by spend (10 per unit), denials by count, budgets by
  name, scope and payment unit.
- `csv` is the same document in long format, one value a row, with the header
  `section,key,detail,unit,measure,value`: `section` is a JSON member above (`period` and `report` for
  the scalars), `key` the item's key (session, rule, hold id, balance...; empty for totals or not
  recorded; a budget's `name@scope`), `detail` the balance of a stale-balance denial or a budget's
  payments' unit, `unit` the item's unit (its amounts', and the unit its payment count is of; a budget's
  row: its measure's unit; empty when it has none), `measure` a field of the item and `value`
  its value (empty for null; true/false; amounts and counts are integers).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from guard.core import JSON
from guard.text import duration
from ledgers import Amount, DoubtfulHold, Ledger, Spend, SpendReport

FORMATS = ("md", "html", "json", "csv")
SCHEMA = {"report": "guard-spend", "version": 1}
SPEND_SECTIONS = ("totals", "by_session", "by_identity", "by_server", "by_tool", "by_hour", "top_urls", "top_origins")
CSV_HEADER = ("section", "key", "detail", "unit", "measure", "value")


def render(report: SpendReport, fmt: str) -> str:
    """The report as text in `fmt` (md, html, json or csv).

    Raises:
        ValueError: an unknown format."""
    renderers: dict[str, Callable[[SpendReport], str]] = {
        "md": to_markdown,
        "html": to_html,
        "json": lambda r: json.dumps(to_json(r), indent=2, ensure_ascii=False) + "\n",
        "csv": to_csv,
    }
    if fmt not in renderers:
        raise ValueError(f"unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return renderers[fmt](report)


def write_reports(
    ledger: Ledger,
    start: datetime,
    end: datetime,
    formats: Sequence[str],
    directory: Path,
    stem: str,
    timezone: str,
) -> list[Path]:
    """Write the report of [start, end) (hours in `timezone`) as `directory/stem.<format>` for each
    format, each file atomically (a reader sees the old file or the new one, never half of one).
    Returns the files written.

    Raises:
        ValueError: an unknown format or time zone.
        LedgerError: the ledger cannot be read.
        OSError: a file cannot be written."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}")
    zone = ZoneInfo(timezone)
    report = ledger.report(start.astimezone(zone), end.astimezone(zone))
    written = []
    for fmt in dict.fromkeys(formats):
        path = directory / f"{stem}.{fmt}"
        write_atomically(path, render(report, fmt))
        written.append(path)
    return written


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory (created if missing). The
    file is its owner's only (mode 0600): reports say who spent what."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def day_period(day: date, timezone: str) -> tuple[datetime, datetime]:
    """The calendar day `day` in `timezone`: [its midnight, the next midnight) (23 or 25 hours at DST)."""
    zone = ZoneInfo(timezone)
    following = day + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=zone), datetime(
        following.year, following.month, following.day, tzinfo=zone
    )


# --- json and csv --------------------------------------------------------------------------------------


def to_json(report: SpendReport) -> JSON:
    """The report as the JSON document the module doc describes."""
    document: JSON = {
        **SCHEMA,
        "period": {"start": _iso(report.start), "end": _iso(report.end), "timezone": report.timezone},
        "generated_at": _iso(report.generated),
        "nothing_spent": report.nothing_spent,
        "calls": dict(report.calls),
    }
    for section in SPEND_SECTIONS:
        document[section] = [_spend_fields(s) for s in getattr(report, section)]
    document["budgets"] = [asdict(b) for b in report.budgets]
    document["denials"] = [asdict(d) for d in report.denials]
    document["would_denials"] = [
        {**asdict(d), "kept": [{"unit": a.unit, "amount": a.value} for a in d.kept]} for d in report.would_denials
    ]
    document["rate_limit_hits"] = [asdict(d) for d in report.rate_limit_hits]
    document["stale_balance_denials"] = [asdict(d) for d in report.stale_denials]
    document["in_doubt"] = [
        {
            "hold": h.id,
            "amount": h.amount.value,
            "unit": h.amount.unit,
            "tool": h.tool,
            "session": h.session,
            "identity": h.identity,
            "server": h.server,
            "resource": h.resource,
            "created": _iso(h.created),
            "age_s": int(h.age_s),
            "valid_before": _iso(h.valid_before) if h.valid_before is not None else None,
            "lapsed": h.lapsed,
        }
        for h in report.in_doubt
    ]
    document["over_reservations"] = [
        {
            "hold": o.id,
            "reserved": o.reserved.value,
            "paid": o.paid.value,
            "excess": o.excess.value,
            "unit": o.reserved.unit,
            "priced_by": o.priced_by,
            "tool": o.tool,
            "session": o.session,
            "identity": o.identity,
            "server": o.server,
            "resource": o.resource,
            "created": _iso(o.created),
        }
        for o in report.over_reservations
    ]
    document["balance_drift"] = [
        {
            "key": d.key,
            "unit": d.unit,
            "first": d.first,
            "first_seen": _iso(d.first_seen),
            "last": d.last,
            "last_seen": _iso(d.last_seen),
            "observations": d.observations,
            "fell_by": d.fell_by,
            "counted": d.counted,
            "external": d.external,
            "topups": d.topups,
            "unexplained": d.unexplained,
            "problem": d.problem,
        }
        for d in report.drift
    ]
    return document


def _spend_fields(spend: Spend) -> JSON:
    return {
        "key": spend.key,
        "unit": spend.unit,
        "spent": spend.spent,
        "in_doubt": spend.in_doubt,
        "external": spend.external,
        "spent_with_external": spend.total,
        "payments": spend.payments,
    }


# Which field of a list's items is the CSV row's key (and detail); the rest become measures.
_CSV_KEYS: dict[str, tuple[str, str | None]] = {
    **{section: ("key", None) for section in SPEND_SECTIONS},
    "denials": ("rule", None),
    "rate_limit_hits": ("rule", None),
    "stale_balance_denials": ("tool", "balance"),
    "in_doubt": ("hold", None),
    "over_reservations": ("hold", None),
    "balance_drift": ("key", None),
}


def to_csv(report: SpendReport) -> str:
    """The JSON document in long format: one `section,key,detail,unit,measure,value` row per value."""
    document = to_json(report)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for measure, value in document["period"].items():
        writer.writerow(("period", "", "", "", measure, value))
    for measure in ("generated_at", "nothing_spent"):
        writer.writerow(("report", "", "", "", measure, _csv_value(document[measure])))
    for decision, count in document["calls"].items():
        writer.writerow(("calls", decision, "", "", "count", count))
    for section, (key_field, detail_field) in _CSV_KEYS.items():
        for item in document[section]:
            key = _csv_value(item[key_field])
            detail = _csv_value(item[detail_field]) if detail_field else ""
            unit = _csv_value(item.get("unit"))
            for measure, value in item.items():
                if measure not in (key_field, detail_field, "unit"):
                    writer.writerow((section, key, detail, unit, measure, _csv_value(value)))
    for item in document["would_denials"]:
        writer.writerow(("would_denials", item["rule"], _csv_value(item["kind"]), "", "count", item["count"]))
        for kept in item["kept"]:
            writer.writerow(
                ("would_denials", item["rule"], _csv_value(item["kind"]), kept["unit"], "kept", kept["amount"])
            )
    for item in document["budgets"]:
        # One budget counts payments in several units: the payments' unit is the detail, and each measure
        # is in its own unit (counted ones in the budget's, paid ones in the payments').
        key = f"{item['budget']}@{item['scope']}"
        for measure in ("spent", "in_doubt", "payments"):
            writer.writerow(("budgets", key, item["paid_unit"], item["unit"], measure, item[measure]))
        for measure in ("paid", "paid_in_doubt"):
            writer.writerow(("budgets", key, item["paid_unit"], item["paid_unit"], measure, item[measure]))
    return out.getvalue()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- for people: one table model, written as Markdown or HTML --------------------------------------------


@dataclass(frozen=True)
class _Table:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    empty: str  # what to say when there are no rows
    note: str | None = None


SPEND_HEADERS = ("spent", "in doubt", "external", "spent incl. external", "payments")


def _tables(report: SpendReport) -> list[_Table]:
    def spend_rows(rows: Sequence[Spend], key: Callable[[str | None], str] | None = None) -> list[tuple[str, ...]]:
        cells: list[tuple[str, ...]] = []
        for s in rows:
            money = (_money(s.spent, s.unit), _money(s.in_doubt, s.unit), _money(s.external, s.unit))
            line = (*money, _money(s.total, s.unit), str(s.payments))
            cells.append(line if key is None else (key(s.key), *line))
        return cells

    def by(title: str, what: str, rows: Sequence[Spend], key: Callable[[str | None], str] = _name) -> _Table:
        return _Table(title, (what, *SPEND_HEADERS), spend_rows(rows, key), "Nothing was spent.")

    return [
        _Table("Spend", SPEND_HEADERS, spend_rows(report.totals), "Nothing was spent in this period."),
        by("Spend by session", "session", report.by_session),
        by("Spend by identity", "identity", report.by_identity),
        by("Spend by server", "server", report.by_server),
        by("Spend by tool", "tool", report.by_tool),
        by(f"Spend by hour ({report.timezone})", "hour", report.by_hour, _hour),
        by("Top paid URLs", "URL", report.top_urls),
        by("Top paid origins", "origin", report.top_origins),
        _Table(
            "Budgets",
            ("budget", "scope", "counted", "in doubt", "paid", "paid in doubt", "payments"),
            [
                (
                    b.budget,
                    b.scope,
                    _money(b.spent, b.unit),
                    _money(b.in_doubt, b.unit),
                    _money(b.paid, b.paid_unit),
                    _money(b.paid_in_doubt, b.paid_unit),
                    str(b.payments),
                )
                for b in report.budgets
            ],
            "No budget counted a payment.",
            "What the payments counted against each budget, in its unit, and what they paid in their own.",
        ),
        _Table(
            "Denials by rule",
            ("rule", "count", "example reason"),
            [(d.rule, str(d.count), d.example or "") for d in report.denials],
            "No call was denied.",
        ),
        _Table(
            "Would-denials (shadow mode)",
            ("rule", "kind", "count", "would have kept", "example reason"),
            [
                (d.rule, d.kind or "", str(d.count), ", ".join(str(a) for a in d.kept) or "nothing", d.example or "")
                for d in report.would_denials
            ],
            "No shadowed rule would have denied a call.",
            "Calls forwarded in shadow mode that a rule would have denied, and what they paid.",
        ),
        _Table(
            "Rate-limit hits",
            ("rule", "count"),
            [(d.rule, str(d.count)) for d in report.rate_limit_hits],
            "No rate limit was hit.",
        ),
        _Table(
            "Stale-balance denials",
            ("tool", "balance", "count"),
            [(d.tool, _name(d.balance), str(d.count)) for d in report.stale_denials],
            "No call was denied for a stale balance.",
        ),
        _Table(
            "Holds in doubt (now)",
            ("hold", "amount", "tool", "session", "identity", "resource", "since", "age", "x402 authorization"),
            [
                (
                    str(h.id),
                    _money(h.amount.value, h.amount.unit),
                    _name(h.tool),
                    _name(h.session),
                    _name(h.identity),
                    _name(h.resource),
                    _moment(h.created),
                    duration(h.age_s),
                    _authorization(h),
                )
                for h in report.in_doubt
            ],
            "No payment is in doubt.",
        ),
        _Table(
            "Payments above their reservation",
            ("hold", "reserved", "paid", "excess", "priced by", "tool", "session", "identity", "resource", "at"),
            [
                (
                    str(o.id),
                    _money(o.reserved.value, o.reserved.unit),
                    _money(o.paid.value, o.paid.unit),
                    _money(o.excess.value, o.excess.unit),
                    _name(o.priced_by),
                    _name(o.tool),
                    _name(o.session),
                    _name(o.identity),
                    _name(o.resource),
                    _moment(o.created),
                )
                for o in report.over_reservations
            ],
            "No payment was above its reservation.",
            "The upstream paid more than the guard's price bound for these calls; the spend above counts all of it.",
        ),
        _Table(
            "Balance drift",
            ("balance", "first", "last", "fell by", "guard counted", "external", "top-ups", "unexplained", "note"),
            [
                (
                    d.key,
                    f"{_money(d.first, d.unit)} at {_moment(d.first_seen)}",
                    f"{_money(d.last, d.unit)} at {_moment(d.last_seen)}",
                    _money(d.fell_by, d.unit),
                    _money(d.counted, d.unit),
                    _money(d.external, d.unit),
                    _money(d.topups, d.unit),
                    _money(d.unexplained, d.unit),
                    d.problem or "",
                )
                for d in report.drift
            ],
            "No money balance was observed in this period.",
            "What the upstream's balance fell by, against what the guard counted as drawn on it between the "
            "two observations (its payments, settled or in doubt), spend it saw only in the balance, and "
            "top-ups (rises between observations).",
        ),
    ]


def _authorization(hold: DoubtfulHold) -> str:
    """An x402 payment in doubt: until when its signed authorization can move money, or that it lapsed."""
    if hold.valid_before is None:
        return ""
    if hold.lapsed:
        return f"past validBefore ({_moment(hold.valid_before)}), no settlement"
    return f"usable until {_moment(hold.valid_before)}"


def _summary(report: SpendReport) -> list[str]:
    calls = ", ".join(f"{count} {decision}" for decision, count in report.calls) or "none"
    return [
        f"Period: {_moment(report.start)} to {_moment(report.end)} ({report.timezone})",
        f"Generated: {_moment(report.generated)}",
        f"Calls: {calls}",
    ]


def to_markdown(report: SpendReport) -> str:
    lines = ["# guard spend report", ""]
    lines += [f"- {_md(line)}" for line in _summary(report)]
    for table in _tables(report):
        lines += ["", f"## {_md(table.title)}", ""]
        if table.note:
            lines += [_md(table.note), ""]
        if not table.rows:
            lines.append(_md(table.empty))
            continue
        lines.append("| " + " | ".join(_md(h) for h in table.headers) + " |")
        lines.append("|" + "|".join("---" for _ in table.headers) + "|")
        lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def _md(text: str) -> str:
    """Plain text as Markdown that shows it as it is (and cannot add links, HTML or table cells)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0 0 1.5em; max-width: 960px; }
p.note { color: #555; max-width: 60em; }
"""


def to_html(report: SpendReport) -> str:
    """A self-contained page: inline style, an inline SVG chart, tables; nothing loaded from anywhere."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>guard spend report: {e(_moment(report.start))} to {e(_moment(report.end))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>guard spend report</h1>",
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in _summary(report)) + "</ul>",
        f"<h2>Spend per hour ({e(report.timezone)}), external spend included</h2>",
        f'<figure class="chart">{spend_chart(report)}</figure>',
    ]
    for table in _tables(report):
        parts.append(f"<h2>{e(table.title)}</h2>")
        if table.note:
            parts.append(f'<p class="note">{e(table.note)}</p>')
        if not table.rows:
            parts.append(f"<p>{e(table.empty)}</p>")
            continue
        head = "".join(f"<th>{e(h)}</th>" for h in table.headers)
        parts.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>")
        for row in table.rows:
            parts.append("<tr>" + "".join(f"<td{_cell_class(cell)}>{e(cell)}</td>" for cell in row) + "</tr>")
        parts.append("</tbody>\n</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_NUMBER = re.compile(r"^-?[\d.]+( \S+)?$")


def _cell_class(cell: str) -> str:
    return ' class="n"' if _NUMBER.match(cell) else ""


# pygal puts a configuration script (for its tooltips, fetched from a CDN unless `js` is empty) and
# comments naming its website into every SVG: the report wants neither.
_SVG_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>|<!--.*?-->", re.DOTALL)


def spend_chart(report: SpendReport) -> str:
    """Spend (external included) per local hour, one bar series per unit, as an inline SVG (pygal)."""
    import pygal  # only the HTML report draws: the other formats and commands start without it

    hours = report.hours()
    chart = pygal.Bar(
        js=[],
        width=960,
        height=360,
        x_label_rotation=30,
        show_minor_x_labels=False,
        x_labels_major_every=max(1, len(hours) // 12),
        truncate_label=-1,
        legend_at_bottom=True,
        no_data_text="Nothing was spent in this period",
    )
    chart.x_labels = [label[:16].replace("T", " ") for label in hours]
    by_unit: dict[str, dict[str, int]] = {}
    for spend in report.by_hour:
        by_unit.setdefault(spend.unit, {})[spend.key or ""] = spend.total
    for unit, values in sorted(by_unit.items()):
        series = [values.get(hour, 0) for hour in hours]
        if not any(series):
            continue
        # Lightning is counted in msat; drawn in sat when every bar is a whole number of sats.
        if unit == "msat" and all(v % 1000 == 0 for v in series):
            unit, series = "sat", [v // 1000 for v in series]
        chart.add(unit, series)
    svg = str(chart.render(is_unicode=True, disable_xml_declaration=True))
    return _SVG_SCRIPT.sub("", svg).replace("<title>Pygal</title>", "<title>Spend per hour</title>", 1)


# --- words and numbers for people ---------------------------------------------------------------------------


def _money(value: int, unit: str) -> str:
    """An amount as `Amount` prints it (Lightning in sat when whole); negative for a drift that rose."""
    if unit == "msat" and value % 1000 == 0:
        value, unit = value // 1000, "sat"
    shown = str(Amount(abs(value), unit))
    return f"-{shown}" if value < 0 else shown


def _name(text: str | None) -> str:
    return text if text is not None else "(none)"


def _hour(label: str | None) -> str:
    return label.replace("T", " ") if label else "(none)"


def _moment(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="seconds")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


__all__ = [
    "FORMATS",
    "day_period",
    "render",
    "spend_chart",
    "to_csv",
    "to_html",
    "to_json",
    "to_markdown",
    "write_atomically",
    "write_reports",
]
