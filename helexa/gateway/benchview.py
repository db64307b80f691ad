"""The fleet page's bench section: ``helexa bench`` results read from ``[gateway] bench_db`` off the event loop."""

from __future__ import annotations

import asyncio
import html
import sqlite3
import time
from pathlib import Path

__all__ = ["BENCH_WAIT_S", "REFRESH_S", "BenchView"]

REFRESH_S = 5  # the page's own refresh period: a section is read again at most this often
BENCH_WAIT_S = 0.05


class BenchView:
    """The page's bench section, read from ``[gateway] bench_db`` off the event loop.

    The database belongs to ``helexa bench``, which may hold its write lock for a while: the read runs in a
    thread (read-only, waiting at most a second for the lock) and the page waits for it at most
    :data:`BENCH_WAIT_S` — past that it shows the last section read (or says it is being read), so neither the
    page nor any other request of the gateway ever waits for that lock. A section is read again at most every
    :data:`REFRESH_S` seconds.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.html = ""
        self.fresh_until = 0.0
        self.task: asyncio.Future[str] | None = None

    async def section(self) -> str:
        """The section's HTML ("" without a database)."""
        if not self.path or time.monotonic() < self.fresh_until:
            return self.html
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(asyncio.to_thread(_bench, self.path))
        done, _ = await asyncio.wait([self.task], timeout=BENCH_WAIT_S)
        if not done:
            return self.html or '<h2>Bench</h2><p class="note">Reading the bench database…</p>'
        try:
            self.html = self.task.result()
        except sqlite3.Error as exc:
            note = f"the bench database cannot be read now ({exc}); trying again at the next refresh"
            return self.html or f'<h2>Bench</h2><p class="note">{html.escape(note)}</p>'
        self.fresh_until = time.monotonic() + REFRESH_S
        return self.html


def _bench(path: str) -> str:
    """The bench section from the database at ``path``. Blocking. :raises sqlite3.Error: busy, broken."""
    if not path or not Path(path).expanduser().is_file():
        return ""
    from helexa.bench.report import knees, summary_table, trend_svg  # noqa: PLC0415  (only with a bench database)
    from helexa.bench.store import read_rows  # noqa: PLC0415

    rows = read_rows(Path(path).expanduser(), timeout=1.0)[-200:]
    knee = "".join(
        f"<li>{html.escape(b)} {html.escape(m)}: {f'c={k}' if k else 'beyond the sweep'}</li>"
        for (b, m), k in sorted(knees(rows).items())
    )
    table = f"<pre>{html.escape(summary_table(rows))}</pre>"
    return f"<h2>Bench</h2><p>Latest measurements (helexa bench).</p>{trend_svg(rows)}{table}" + (
        f"<p>Knee of the concurrency curve:</p><ul>{knee}</ul>" if knee else ""
    )
