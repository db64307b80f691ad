"""Engine ports: one allocator per neuron, shared by every harness.

Each engine listens on its own loopback port from ``[neuron] port_range``. A port is reserved from the moment it
is handed out until its engine is gone — across harnesses: two harnesses with allocators of their own would
both hand out a port that is free *now*, and the engine that binds later (vLLM takes a minute) would lose it.
"""

from __future__ import annotations

import socket

__all__ = ["PortAllocator"]


class PortAllocator:
    """Hands out free TCP ports on ``host`` from ``[first, last]``; a port is reserved until released."""

    def __init__(self, first: int, last: int, host: str = "127.0.0.1") -> None:
        self.first, self.last, self.host = first, last, host
        self._reserved: set[int] = set()

    def allocate(self) -> int:
        """Reserve and return a port nothing listens on. :raises OSError: when the range is exhausted."""
        for port in range(self.first, self.last + 1):
            if port in self._reserved:
                continue
            with socket.socket() as sock:
                # SO_REUSEADDR as servers set it: a port with only TIME_WAIT leftovers is free to listen on
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, port))
                except OSError:
                    continue
            self._reserved.add(port)
            return port
        raise OSError(f"no free port in {self.first}-{self.last} on {self.host}")

    def release(self, port: int) -> None:
        """Return ``port`` to the pool."""
        self._reserved.discard(port)
