"""Gateway workers: requests per second at saturation with 1 and with 2 worker processes on one port, in one run.

    python bench/gateway_workers.py [--seconds 10] [--rounds 3] [--connections 64] [--limits]

Processes: a Redis server (Debian's ``redis-server``: the workers share state through it, as ``[gateway] workers``
requires), the fast fake neuron of ``upstreams.py`` (answers at once), ``helexa run --role gateway`` with
``workers = 1`` and then ``workers = 2`` (in alternating rounds), and ``wrk`` (Debian's) driving non-streamed chat
requests at ``--connections`` connections for ``--seconds``. ``--limits``: requests carry a named key with every
limit on (none reached), so each is counted in the store — the cost of shared limits. Prints each round's
requests/s, the medians and the 2-worker/1-worker ratio. Everything binds 127.0.0.1 and is stopped at the end.

On a machine with few cores the load generator and the fake neuron compete with the workers for them: the ratio
is what this machine shows, not the gain on a larger one (``nproc`` is printed with it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loopback import free_port

HERE = Path(__file__).resolve().parent
BODY = '{"model": "bench-model", "messages": [{"role": "user", "content": "hello"}]}'


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def wrk_script(path: Path, key: str) -> None:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        + auth
        + f"wrk.body = '{BODY}'\n"
        + 'function response(status, headers, body) if status ~= 200 then error("status " .. status) end end\n'
    )


def measure(port: int, script: Path, args: argparse.Namespace) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{args.connections}",
            f"-d{args.seconds}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:  # (the script fails a run on any other status)
        print(out, file=sys.stderr)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--limits", action="store_true", help="a named key with every limit on (counted in the store)")
    args = parser.parse_args()
    for tool, package in (("redis-server", "redis-server"), ("wrk", "wrk")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install {package}")
    work = Path(tempfile.mkdtemp(prefix="helexa-bench-workers-"))
    redis_port, neuron_port = free_port(), free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            **quiet,
        ),
        subprocess.Popen([sys.executable, str(HERE / "upstreams.py"), "neuron", "--port", str(neuron_port)], **quiet),
    ]
    key = "sk-bench" if args.limits else ""
    script = work / "post.lua"
    wrk_script(script, key)
    results: dict[int, list[float]] = {1: [], 2: []}
    try:
        wait_port(redis_port)
        wait_port(neuron_port)
        for round_ in range(args.rounds):
            for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
                port = free_port()
                config = work / f"gateway-{workers}.toml"
                text = (
                    f'[server]\nlog_level = "warning"\n[gateway]\nlisten = "127.0.0.1:{port}"\n'
                    f'metrics_listen = "127.0.0.1:{free_port()}"\nworkers = {workers}\n'
                    f'[cluster]\nstore = "redis://127.0.0.1:{redis_port}/0"\nprefix = "bench{round_}x{workers}"\n'
                    f'[[neurons]]\nname = "fast"\nendpoint = "http://127.0.0.1:{neuron_port}"\n'
                )
                if key:
                    text += (
                        f'[[auth.keys]]\nname = "bench"\nkey = "{key}"\nrequests_per_minute = 100000000\n'
                        "max_concurrent = 100000\ntokens_per_hour = 1000000000000\n"
                    )
                config.write_text(text)
                gateway = subprocess.Popen(
                    [sys.executable, "-m", "helexa", "run", "--role", "gateway", "--config", str(config)],
                    cwd=HERE.parent,
                    **quiet,
                )
                try:
                    wait_port(port)
                    time.sleep(1.0 + workers)  # every worker up and polled the neuron
                    measure(port, script, argparse.Namespace(connections=args.connections, seconds=2))  # warm-up
                    results[workers].append(measure(port, script, args))
                    print(f"round {round_ + 1}: {workers} worker(s): {results[workers][-1]:.0f} requests/s", flush=True)
                finally:
                    gateway.send_signal(signal.SIGTERM)
                    gateway.wait(timeout=30)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=20)
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print(
        f"gateway workers at saturation ({args.connections} connections, {args.seconds} s, "
        f"{'a named key with limits in the store' if key else 'open'}, nproc {os.cpu_count()}): "
        f"1 worker {one:.0f} req/s, 2 workers {two:.0f} req/s, ratio {two / one:.2f}"
    )


if __name__ == "__main__":
    main()
