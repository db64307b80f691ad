"""systemd's readiness protocol (``Type=notify``), by its documented socket protocol: no dependency.

When systemd starts a service with ``Type=notify`` it sets ``NOTIFY_SOCKET``; the service sends datagrams of
``KEY=value`` lines to it (``READY=1`` once it serves, ``STATUS=…`` for ``systemctl status``, ``STOPPING=1``
when it drains). Without ``NOTIFY_SOCKET`` every call does nothing. See sd_notify(3).
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

logger = logging.getLogger(__name__)


def notify(**fields: str | int) -> bool:
    """Send ``fields`` (``ready=1`` → ``READY=1``) to systemd; ``True`` if there was a socket to send to."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        logger.warning("could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True
