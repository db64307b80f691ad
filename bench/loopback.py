"""What every benchmark here shares: ports for the servers it starts on loopback, and serving an app on one.

Run by the test suite (``tests/test_soak.py``), a script takes its ports from the suite's block
(``TEST_PORTS_HELEXA=first-last``, below the ephemeral range), so two suites on one machine never collide.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

from aiohttp import web

__all__ = ["free_port", "serve"]

_lease = os.environ.get("TEST_PORTS_HELEXA", "")
# a random start: the suite that runs this script hands out its block's ports from the bottom
_candidates = (
    itertools.cycle(random.sample(range(int(_lease.split("-")[0]), int(_lease.split("-")[1]) + 1), 200))
    if _lease
    else None
)


def free_port() -> int:
    """A loopback port nothing listens on now (of the suite's block when a test runs this script)."""
    if _candidates is not None:
        for port in itertools.islice(_candidates, 200):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on a free loopback port: its runner (clean it up) and its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"
