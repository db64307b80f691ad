"""``python -m helexa_llamacpp.server``: llama.cpp's HTTP server from the prebuilt ``xllamacpp`` wheel.

Takes the subset of ``llama-server`` flags the llama.cpp harness passes, so the harness builds one argv for
either binary. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The llama-server flags this launcher understands."""
    p = argparse.ArgumentParser(prog="helexa_llamacpp.server", description=__doc__)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-a", "--alias", default="")
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("-ngl", "--gpu-layers", type=int, default=0)
    p.add_argument("-t", "--threads", type=int, default=0)
    p.add_argument("--tensor-split", default="")
    p.add_argument("--jinja", action="store_true")
    p.add_argument("--metrics", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start the server and block until a termination signal."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import xllamacpp  # noqa: PLC0415  (heavy native module: only in the engine process)
    except ImportError:
        sys.exit("no llama-server on PATH and xllamacpp is not installed: pip install 'helexa[llamacpp]'")
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.n_parallel = args.parallel
    params.n_gpu_layers = args.gpu_layers
    params.use_jinja = args.jinja
    params.endpoint_metrics = args.metrics
    if args.alias:
        params.model_alias = {args.alias}
    if args.threads:
        params.cpuparams.n_threads = args.threads
    if args.tensor_split:
        split = [float(x) for x in args.tensor_split.split(",")]
        params.tensor_split = split + [0.0] * (len(params.tensor_split) - len(split))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = xllamacpp.Server(params)
    print(f"helexa_llamacpp.server: listening on {server.listening_address}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    main()
