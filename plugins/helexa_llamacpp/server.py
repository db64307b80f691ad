"""``python -m helexa_llamacpp.server``: llama.cpp's HTTP server from the prebuilt ``xllamacpp`` wheel.

Takes the ``llama-server`` flags the harness passes plus the common tuning flags of :data:`PASSTHROUGH`
(spelled as llama-server spells them), so one argv works for either binary; :func:`unknown_flags` tells the
harness which ``extra_args`` it would not understand. Like llama-server, it takes its API key from
``LLAMA_ARG_API_KEY`` (every route but ``/health`` then needs it). Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import NoReturn

# llama-server flags (with their short forms) -> the xllamacpp.CommonParams field they set, and its type.
PASSTHROUGH: dict[tuple[str, ...], tuple[str, type]] = {
    ("--chat-template",): ("chat_template", str),
    ("-b", "--batch-size"): ("n_batch", int),
    ("-ub", "--ubatch-size"): ("n_ubatch", int),
    ("-n", "--n-predict"): ("n_predict", int),
    ("--keep",): ("n_keep", int),
    ("--cache-reuse",): ("n_cache_reuse", int),
    ("--threads-http",): ("n_threads_http", int),
    ("--rope-freq-base",): ("rope_freq_base", float),
    ("--rope-freq-scale",): ("rope_freq_scale", float),
    ("--temp",): ("sampling.temp", float),
    ("--top-k",): ("sampling.top_k", int),
    ("--top-p",): ("sampling.top_p", float),
    ("--min-p",): ("sampling.min_p", float),
    ("--repeat-penalty",): ("sampling.penalty_repeat", float),
    ("--repeat-last-n",): ("sampling.penalty_last_n", int),
    ("--presence-penalty",): ("sampling.penalty_present", float),
    ("--frequency-penalty",): ("sampling.penalty_freq", float),
    ("-s", "--seed"): ("sampling.seed", int),
    ("--dry-multiplier",): ("sampling.dry_multiplier", float),
    ("--dry-base",): ("sampling.dry_base", float),
    ("--dry-allowed-length",): ("sampling.dry_allowed_length", int),
}


_POOLING = {  # --pooling as llama-server spells it -> xllamacpp's llama_pooling_type
    "none": "LLAMA_POOLING_TYPE_NONE",
    "mean": "LLAMA_POOLING_TYPE_MEAN",
    "cls": "LLAMA_POOLING_TYPE_CLS",
    "last": "LLAMA_POOLING_TYPE_LAST",
    "rank": "LLAMA_POOLING_TYPE_RANK",
}


class _Refusal(Exception):
    pass


class _CheckingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # raise instead of printing usage and exiting
        raise _Refusal(message)


def _parser(kind: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = kind(prog="helexa_llamacpp.server", description=__doc__)
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
    p.add_argument("-kvu", "--kv-unified", action="store_true")
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--chat-template-file", default="")
    p.add_argument("--embedding", "--embeddings", action="store_true")
    p.add_argument("--reranking", "--rerank", action="store_true")
    p.add_argument("--pooling", choices=sorted(_POOLING), default="")
    for flags, (field, value_type) in PASSTHROUGH.items():
        p.add_argument(*flags, dest=field.replace(".", "__"), type=value_type, default=None)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The llama-server flags this launcher understands."""
    return _parser().parse_args(argv)


def unknown_flags(extra: list[str]) -> list[str]:
    """The flags of ``extra`` (arguments appended to a llama-server command line) this launcher would refuse."""
    try:
        _, rest = _parser(_CheckingParser).parse_known_args(["-m", "x", "--port", "1", *extra])
    except _Refusal as exc:
        return [str(exc)]  # e.g. "argument --temp: expected one argument"
    return [arg for arg in rest if arg.startswith("-")] or rest


def accepted_flags() -> list[str]:
    """Every flag this launcher takes beyond the ones the harness sets itself, for error messages."""
    return ["--chat-template-file", "--pooling", *(flags[-1] for flags in PASSTHROUGH)]


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
    params.kv_unified = args.kv_unified
    params.endpoint_metrics = args.metrics
    if os.environ.get("LLAMA_ARG_API_KEY"):  # llama-server's own variable for --api-key (argv is world-readable)
        params.api_keys = [os.environ["LLAMA_ARG_API_KEY"]]
    if args.alias:
        params.model_alias = {args.alias}
    if args.threads:
        params.cpuparams.n_threads = args.threads
    if args.chat_template_file:
        with open(args.chat_template_file, encoding="utf-8") as fh:
            params.chat_template = fh.read()
    if args.embedding or args.reranking:
        params.embedding = True
    pooling = "rank" if args.reranking else args.pooling
    if pooling:
        params.pooling_type = getattr(xllamacpp.llama_pooling_type, _POOLING[pooling])
    for _, (field, _) in PASSTHROUGH.items():
        value = getattr(args, field.replace(".", "__"))
        if value is not None:
            target, _, name = field.rpartition(".")
            setattr(getattr(params, target) if target else params, name, value)
    if args.tensor_split:
        split = [float(x) for x in args.tensor_split.split(",")]
        params.tensor_split = split + [0.0] * (len(params.tensor_split) - len(split))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = xllamacpp.Server(params)
    print(f"helexa_llamacpp.server: listening on {server.listening_address}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    main()
