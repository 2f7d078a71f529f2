"""Result tables: plain-text, CSV and JSON renderings shared by the CLI and the scripts.

A table is a list of row dicts with the same keys, plus a list of ``Column``s saying which keys to show, under what
header and how to format them. Keys carry their unit (``prefill_latency_s``); headers show a human unit (``ms``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence


@dataclass(frozen=True)
class Column:
    """One column of a text table: row key, header text, and a formatter from value to text."""

    key: str
    header: str
    fmt: Callable[[Any], str] = str
    align: str = ">"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.1 else f"{seconds * 1e3:.1f}"


def fmt_float(digits: int) -> Callable[[Any], str]:
    return lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f}"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}x"


def fmt_bool(v: bool) -> str:
    return "yes" if v else "NO"


def format_table(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None) -> str:
    """Fixed-width text table; the column width fits the longest cell."""
    cells = [[c.header for c in columns]] + [[c.fmt(row.get(c.key)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    if title:
        lines.append(title)
    for n, r in enumerate(cells):
        parts = [f"{text:{'<' if c.align == '<' else '>'}{w}}" for text, c, w in zip(r, columns, widths)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_csv(rows: Iterable[dict], keys: Sequence[str] | None = None) -> str:
    """CSV text of the rows (all keys of the first row unless ``keys`` is given)."""
    rows = list(rows)
    if not rows:
        return ""
    keys = list(keys or rows[0].keys())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in keys})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def read_csv(text: str) -> list[dict]:
    """Rows of a CSV written by ``to_csv``, with numbers and booleans parsed back."""
    return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _parse_cell(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def to_json(obj: Any) -> str:
    """Pretty JSON; NaN/inf are not valid JSON, so they are written as null."""
    return json.dumps(_json_safe(obj), indent=2, sort_keys=False)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
