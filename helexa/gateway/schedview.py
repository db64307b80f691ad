"""The fleet page's scheduling section: the scheduler's policy, what drains, and per model the queue by priority,
swaps, idle unloads and the mean queue wait — read from the gateway's own metrics, no second source of truth."""

from __future__ import annotations

import html
from typing import Any

from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.queue import Scheduler
from helexa.gateway.scheduling import PRIORITY_NAMES

__all__ = ["scheduling_section"]


def _samples(family: Any, suffix: str = "") -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of a prometheus_client family's samples whose name ends with ``suffix``."""
    return [(dict(s.labels), s.value) for m in family.collect() for s in m.samples if s.name.endswith(suffix)]


def scheduling_section(metrics: GatewayMetrics, queue: Scheduler) -> str:
    """The page's Scheduling section as HTML: the policy, what drains, and per model the requests waiting by
    priority, swaps, idle unloads and the mean queue wait (all since start)."""
    rows: dict[str, dict[str, float]] = {}
    for labels, value in _samples(metrics.load_queue):
        rows.setdefault(labels["model"], {})[labels["priority"]] = value
    for name, family in (("swaps", metrics.swaps), ("idle", metrics.idle_unloads)):
        for labels, value in _samples(family, "_total"):
            row = rows.setdefault(labels["model"], {})
            row[name] = row.get(name, 0.0) + value
    for part in ("_sum", "_count"):
        for labels, value in _samples(metrics.queue_wait, part):
            row = rows.setdefault(labels["model"], {})
            row[part] = row.get(part, 0.0) + value
    policy = queue.policy
    head = (
        f"<p>policy <b>{html.escape(policy.mode)}</b>, a request waits at most "
        f"{policy.max_wait:g}s before it is served in arrival order; lower priorities never evict what a higher one "
        f"used in the last {policy.hold:g}s.</p>"
    )
    if queue.held:
        held = ", ".join(f"{html.escape(m)} on {html.escape(n)}" for n, m in sorted(queue.held))
        head += f"<p>taking no new requests (draining or unloading): {held}</p>"
    lines = []
    for model, row in sorted(rows.items()):
        waiting = " / ".join(f"{int(row.get(p, 0))}" for p in reversed(PRIORITY_NAMES))
        mean = f"{row['_sum'] / row['_count']:.2f}s" if row.get("_count") else "-"
        lines.append(
            f'<tr class="queue" data-model="{html.escape(model)}"><td>{html.escape(model)}</td><td>{waiting}</td>'
            f"<td>{int(row.get('swaps', 0))}</td><td>{int(row.get('idle', 0))}</td><td>{mean}</td></tr>"
        )
    table = (
        "<table><tr><th>model</th><th>waiting (interactive / normal / batch)</th><th>swaps</th>"
        "<th>idle unloads</th><th>mean queue wait</th></tr>" + "".join(lines) + "</table>"
        if lines
        else "<p>Nothing has waited for a load or a swap yet.</p>"
    )
    return "<h2>Scheduling</h2>" + head + table
