"""How sizes and a download's progress read to a person: shared by the CLI and the fleet page."""

from __future__ import annotations

from typing import Any

__all__ = ["describe_progress", "size_text"]


def size_text(n: float) -> str:
    """``2.6 GiB`` or ``80 MiB``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def describe_progress(download: dict[str, Any]) -> str:
    """``45% of 2.6 GiB at 80 MiB/s`` for a download in progress (a ``DownloadInfo`` as plain data)."""
    done, total, rate = download["bytes_done"], download["bytes_total"], download["bytes_per_second"]
    share = f"{100 * done / total:.0f}% of {size_text(total)}" if total else size_text(done)
    return f"{share} at {size_text(rate)}/s"
