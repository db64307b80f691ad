"""``helexa bench report`` and ``compare``: tables from the database, and a self-contained HTML report.

The HTML report has no JavaScript and loads nothing from anywhere: its plots are SVG drawn here (fleet hosts
are often offline). Plots: the concurrency curve per model (where latency climbs: the knee), time to first
token across builds, and the spread of measurements per cell.
"""

from __future__ import annotations

import html
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["compare_table", "html_report", "knees", "summary_table", "trend_svg"]

Row = dict[str, Any]
KNEE_FACTOR = 1.5  # latency this many times the single-request latency: the knee of the concurrency curve


def _cells(rows: Iterable[Row]) -> dict[tuple[str, str, str, int], list[Row]]:
    cells: dict[tuple[str, str, str, int], list[Row]] = defaultdict(list)
    for row in rows:
        cells[(row["build"], row["model"], row["scenario"], row["concurrency"])].append(row)
    return cells


def _median(rows: Sequence[Row], key: str) -> float | None:
    values = [r[key] for r in rows if r["ok"] and r[key] is not None]
    return statistics.median(values) if values else None


def _ms(value: float | None) -> str:
    return f"{value * 1000:.0f}" if value is not None else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def summary_table(rows: Iterable[Row]) -> str:
    """Medians per cell: build, model, scenario, concurrency, TTFT, ITL, tokens/s, latency, runs (failed)."""
    head = ["BUILD", "MODEL", "SCENARIO", "C", "TTFT P50 ms", "TTFT P95 ms", "ITL ms", "TOK/S", "LAT P50 s", "RUNS"]
    out = [head]
    for (build, model, scenario, level), cell in sorted(_cells(rows).items()):
        failed = sum(1 for r in cell if not r["ok"])
        tps = _median(cell, "tokens_per_second")
        latency = _median(cell, "swap_seconds") if scenario in ("swap", "evict") else _median(cell, "latency_p50")
        out.append(
            [
                build,
                model,
                scenario,
                str(level),
                _ms(_median(cell, "ttft_p50")),
                _ms(_median(cell, "ttft_p95")),
                _ms(_median(cell, "itl_p50")),
                f"{tps:.1f}" if tps else "-",
                f"{latency:.2f}" if latency is not None else "-",
                f"{len(cell) - failed}" + (f" ({failed} failed)" if failed else ""),
            ]
        )
    return _table(out) if len(out) > 1 else "no measurements yet"


def knees(rows: Iterable[Row]) -> dict[tuple[str, str], int | None]:
    """Per (build, model): the lowest concurrency whose p50 latency is :data:`KNEE_FACTOR` times the single-request
    one (None: latency did not climb that far within the sweep)."""
    curves: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for (build, model, scenario, level), cell in _cells(rows).items():
        latency = _median(cell, "latency_p50")
        if scenario == "chat" and latency is not None:
            curves[(build, model)][level] = latency
    out = {}
    for key, curve in curves.items():
        base = curve.get(1)
        out[key] = next((c for c in sorted(curve) if base and c > 1 and curve[c] >= KNEE_FACTOR * base), None)
    return out


def compare_table(rows: Iterable[Row], a: str, b: str) -> str:
    """Each cell both builds measured: A and B medians, the change, and the noise (spread of the repeats)."""
    cells = _cells(rows)
    out = [["MODEL", "SCENARIO", "C", "METRIC", a, b, "CHANGE", "NOISE"]]
    keys = sorted({k[1:] for k in cells if k[0] == a} & {k[1:] for k in cells if k[0] == b})
    for model, scenario, level in keys:
        for metric in ("ttft_p50", "latency_p50", "tokens_per_second", "swap_seconds"):
            before, after = cells[(a, model, scenario, level)], cells[(b, model, scenario, level)]
            x, y = _median(before, metric), _median(after, metric)
            if x is None or y is None:
                continue
            noise = max(_spread(before, metric), _spread(after, metric))
            out.append(
                [
                    model,
                    scenario,
                    str(level),
                    metric,
                    f"{x:.4g}",
                    f"{y:.4g}",
                    f"{(y - x) / x * 100:+.1f}%" if x else "-",
                    f"±{noise * 100:.1f}%",
                ]
            )
    if len(out) == 1:
        return f"builds {a!r} and {b!r} have no cell in common"
    return _table(out)


def _spread(rows: Sequence[Row], key: str) -> float:
    """Standard deviation over median of one build's repeats (0 with fewer than two)."""
    values = [r[key] for r in rows if r["ok"] and r[key] is not None]
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return statistics.stdev(values) / middle if middle else 0.0


# ---------------------------------------------------------------------------------------------- the HTML report

_W, _H, _PAD = 560, 260, 44
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")


def _svg_lines(title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str) -> str:
    """A line plot of ``series`` (name -> points), axes from zero, as inline SVG."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    x_max = max(x for x, _ in points) or 1.0
    y_max = max(y for _, y in points) or 1.0

    def at(x: float, y: float) -> str:
        return f"{_PAD + x / x_max * (_W - 2 * _PAD):.1f},{_H - _PAD - y / y_max * (_H - 2 * _PAD):.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#444"/>',
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#444"/>',
        f'<text x="{_W / 2}" y="{_H - 8}" text-anchor="middle" font-size="12">{html.escape(x_label)}</text>',
        f'<text x="12" y="{_PAD - 12}" font-size="12">{html.escape(y_label)} (max {y_max:.3g})</text>',
        f'<text x="{_W - _PAD}" y="{_H - _PAD + 16}" text-anchor="end" font-size="11">{x_max:.3g}</text>',
    ]
    for i, (name, values) in enumerate(sorted(series.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(at(x, y) for x, y in sorted(values))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for x, y in values:
            parts.append(f'<circle cx="{at(x, y).split(",")[0]}" cy="{at(x, y).split(",")[1]}" r="3" fill="{colour}"/>')
        parts.append(
            f'<text x="{_W - _PAD + 4}" y="{_PAD + 14 * i}" font-size="11" fill="{colour}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def trend_svg(rows: list[Row]) -> str:
    """An SVG of each model's p50 time to first token (one request at a time) across builds, oldest first."""
    builds = list(dict.fromkeys(r["build"] for r in rows))
    trend: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (build, model, scenario, level), cell in _cells(rows).items():
        ttft = _median(cell, "ttft_p50")
        if scenario == "chat" and level == 1 and ttft is not None:
            trend[model].append((float(builds.index(build) + 1), ttft * 1000))
    return _svg_lines("Time to first token across builds", trend, "build (oldest first)", "p50 TTFT ms")


def html_report(rows: list[Row]) -> str:
    """The whole report as one HTML document (inline CSS and SVG, nothing fetched)."""
    cells = _cells(rows)
    builds = list(dict.fromkeys(r["build"] for r in rows))
    curve: dict[str, list[tuple[float, float]]] = defaultdict(list)
    spread: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (build, model, scenario, level), cell in cells.items():
        latency = _median(cell, "latency_p50")
        if scenario == "chat" and latency is not None and build == builds[-1]:
            curve[model].append((float(level), latency))
        if level == 1 and scenario not in ("swap", "evict") and build == builds[-1]:
            ok = [r["ttft_p50"] * 1000 for r in cell if r["ok"] and r["ttft_p50"] is not None]
            spread[f"{model} {scenario}"] += [(float(i + 1), v) for i, v in enumerate(ok)]
    knee_rows = "".join(
        f"<tr><td>{html.escape(b)}</td><td>{html.escape(m)}</td><td>{k if k else 'beyond the sweep'}</td></tr>"
        for (b, m), k in sorted(knees(rows).items())
    )
    build_list = "".join(f"<li>{i + 1}: {html.escape(b)}</li>" for i, b in enumerate(builds))
    plots = [
        _svg_lines("Latency by concurrency (latest build)", curve, "concurrent requests", "p50 latency s"),
        trend_svg(rows),
        _svg_lines("TTFT of each repeat (latest build, one request at a time)", spread, "repeat", "TTFT ms"),
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>helexa bench report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} pre{{background:#f6f6f6;padding:1em;
overflow-x:auto}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2em .6em}}
figure{{display:inline-block;margin:1em}}</style></head>
<body><h1>helexa bench report</h1>
<p>{len(rows)} measurements of {len(cells)} cells over {len(builds)} build(s).</p>
<h2>Builds</h2><ol>{build_list}</ol>
<h2>Plots</h2>{"".join(f"<figure>{p}</figure>" for p in plots if p)}
<h2>Knee of the concurrency curve</h2>
<table><tr><th>build</th><th>model</th>
<th>concurrency where p50 latency reaches {KNEE_FACTOR} times one request's</th></tr>
{knee_rows}</table>
<h2>All cells</h2><pre>{html.escape(summary_table(rows))}</pre>
</body></html>
"""
