"""The fleet page's batches section: the latest batches, how far each got, and (for admins) a cancel button —
read from the batch store, as ``/v1/batches`` answers."""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import quote

from helexa.batches.contract import ACTIVE, Batches

__all__ = ["SHOWN", "batches_section"]

SHOWN = 20  # the latest batches the page lists


def _age(created: int) -> str:
    seconds = max(0, int(time.time()) - created)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _row(batch: dict[str, Any], admin: bool) -> str:
    done, total = batch["completed"] + batch["failed"], batch["total"]
    share = 0 if not total else 100 * done / total
    progress = (
        f"{batch['completed']} done, {batch['failed']} failed of {total} "
        f'<div class="bar" title="{share:.0f}%"><div style="width:{share:.0f}%"></div></div>'
    )
    button = ""
    if admin and batch["status"] in ACTIVE and batch["status"] != "cancelling":
        button = (
            f'<form method="post" action="/ui/batches/{quote(batch["id"], safe="")}/cancel">'
            '<button type="submit" name="go" value="cancel">cancel</button></form>'
        )
    return (
        f'<tr class="batch" data-batch="{html.escape(batch["id"])}"><td>{html.escape(batch["id"])}</td>'
        f"<td>{html.escape(batch['owner'] or '-')}</td><td>{html.escape(batch['model'] or '-')}</td>"
        f"<td>{html.escape(batch['endpoint'])}</td><td>{html.escape(batch['status'])}</td><td>{progress}</td>"
        f"<td>{_age(batch['created_at'])}</td><td>{button}</td></tr>"
    )


async def batches_section(store: Batches, viewer: str, admin: bool) -> str:
    """The page's Batches section as HTML: every key's latest batches for an admin (or with no keys), the
    viewer's own otherwise."""
    records, more = await store.list_batches(None if admin else viewer, "", SHOWN)
    if not records:
        return "<h2>Batches</h2><p>No batch yet (<code>POST /v1/batches</code>, see docs/batches.md).</p>"
    rows = "".join(_row(r, admin) for r in records)
    tail = f"<p>The latest {SHOWN}; <code>helexa batches list</code> shows more.</p>" if more else ""
    return (
        "<h2>Batches</h2><table><tr><th>batch</th><th>key</th><th>model</th><th>endpoint</th><th>status</th>"
        "<th>progress</th><th>created</th><th></th></tr>" + rows + "</table>" + tail
    )
