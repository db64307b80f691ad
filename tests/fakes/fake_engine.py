"""A fake OpenAI-compatible engine: a real process for fault injection, controlled by flags.

    python fake_engine.py --port N [--startup-delay S] [--fail-health] [--exit-at-start CODE]
        [--crash-after N] [--ignore-sigterm] [--reply TEXT] [--chunk-size N] [--chunk-delay S]
        [--agent-tool-call JSON] [--bare-json] [--record FILE] [--headless] [--workers N] [--detached-worker]

Serves GET /health, GET /v1/models, GET /stats, POST /v1/chat/completions (streaming or not) and
POST /v1/embeddings. /stats reports requests served and streams aborted by the client. Like the real engines, it
takes an API key from its environment (``FAKE_ENGINE_API_KEY``, or vLLM's ``VLLM_API_KEY`` or llama.cpp's
``LLAMA_ARG_API_KEY`` when a harness of theirs runs it): then every route but /health answers 401 without
``Authorization: Bearer <key>``.

``--agent-tool-call '{"name": …, "arguments": {…}}'`` scripts one agent turn: a request that offers tools and
does not end with a tool result is answered with that call (as ``<tool_call>`` text, or as bare JSON with
``--bare-json``); a request that ends with a tool result is answered "The tool said: <result>". ``--script FILE``
scripts a longer agent turn: a JSON list of steps, step *n* answering a request whose messages end with *n*
tool results after the last user message. A step has ``text`` (``{tool_result}`` is replaced by the last
result), optionally ``think`` (sent first inside ``<think>``), ``tool_call`` (sent after the text inside
``<tool_call>``) and ``chunk_delay`` (seconds between chunks, for cancelling mid-stream). ``--record``
appends every chat request body, one JSON line each, so tests can assert what the engine received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from aiohttp import web

# What llama.cpp answers when a chat template raises (captured from xllamacpp with Qwen's rule).
TEMPLATE_REFUSAL = (
    "Unable to generate parser for this template. Automatic parser generation failed: \n------------\nWhile "
    "executing CallExpression at line 1, column 91 in source:\n...and not loop.first %}{{- raise_exception('System "
    "message must be at the beginnin...\n                                           ^\nError: Jinja Exception: System "
    "message must be at the beginning."
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", "--served-model-name", dest="model", default="fake")
    p.add_argument("--sleep-endpoints", action="store_true", help="serve vLLM's /sleep and /wake_up")
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--bind-delay", type=float, default=0.0, help="seconds before it binds its port (vLLM's start)")
    p.add_argument("--fail-health", action="store_true")
    p.add_argument("--exit-at-start", type=int, default=None)
    p.add_argument("--say", default="", help="a line to print before anything else (e.g. an error to diagnose)")
    p.add_argument("--crash-after", type=int, default=0, help="exit(3) after serving N requests")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--reply", default="Hello from the fake engine.")
    p.add_argument("--chunk-size", type=int, default=4)
    p.add_argument("--chunk-delay", type=float, default=0.0)
    p.add_argument("--agent-tool-call", default="", help="JSON of the call to make when tools are offered")
    p.add_argument("--bare-json", action="store_true", help="write the scripted call as bare JSON, no markers")
    p.add_argument("--script", default="", help="a JSON file of turn steps (see the module docstring)")
    p.add_argument("--strict-system", action="store_true", help="refuse system messages after the first turn")
    p.add_argument("--crlf", action="store_true", help="end stream lines with CRLF (as some servers do)")
    p.add_argument("--record", default="", help="append each chat request body as a JSON line to this file")
    p.add_argument("--headless", action="store_true", help="serve no API: a gang's follower rank (vLLM's flag)")
    p.add_argument("--context", type=int, default=0, help="refuse prompts over N tokens (4 bytes a token) as llama.cpp")
    p.add_argument("--workers", type=int, default=0, help="start N worker processes that outlive a killed parent")
    p.add_argument("--detached-worker", action="store_true", help="and one more in a session of its own")
    args, _ = p.parse_known_args()  # engine flags it does not model (vLLM's, when driven by that harness)

    def frame(event: bytes) -> bytes:
        return event.replace(b"\n", b"\r\n") if args.crlf else event

    print(f"fake engine pid {os.getpid()} starting on port {args.port}", flush=True)
    if args.say:
        print(args.say, flush=True)
    if args.exit_at_start is not None:
        print("fake engine: failing at start as asked", flush=True)
        sys.exit(args.exit_at_start)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = [sys.executable, "-c", "import signal; signal.pause()"]  # as vLLM's: nothing ties them to the parent
    workers = [subprocess.Popen(worker) for _ in range(args.workers)]
    if args.detached_worker:
        workers.append(subprocess.Popen(worker, start_new_session=True))
    if workers:
        print(f"fake engine: workers {' '.join(str(w.pid) for w in workers)}", flush=True)
    if args.headless:  # a follower rank: no HTTP at all, it runs until stopped
        print("fake engine: headless rank, no API", flush=True)
        while True:
            signal.pause()
    if args.bind_delay:
        time.sleep(args.bind_delay)
    stats: dict = {"requests": 0, "aborted": 0, "completed": 0}
    ready_at = time.monotonic() + args.startup_delay

    async def health(request):
        if args.fail_health or time.monotonic() < ready_at:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ok"})

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": args.model, "object": "model"}]})

    async def get_stats(request):
        return web.json_response({k: v for k, v in stats.items() if k != "last_request"})

    async def last_request(request):
        return web.json_response(stats.get("last_request"))

    def served():
        stats["requests"] += 1
        if args.crash_after and stats["requests"] >= args.crash_after:
            print("fake engine: crashing as asked", flush=True)
            asyncio.get_running_loop().call_later(0.05, os._exit, 3)

    def chunk(content, finish=None, role=None):
        delta = {} if content is None else {"content": content}
        if role:
            delta = {"role": role, "content": ""}
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": args.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    script = json.loads(open(args.script).read()) if args.script else []  # noqa: SIM115 (read once at start)

    def tool_text(message):
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content).strip()[:300]

    def script_step(messages):
        """The scripted reply and chunk delay for a conversation (``--script``)."""
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        after = messages[users[-1] + 1 :] if users else messages
        results = [m for m in after if m.get("role") == "tool"]
        step = script[min(len(results), len(script) - 1)]
        text = step.get("text", "").replace("{tool_result}", tool_text(results[-1]) if results else "")
        if step.get("think"):
            text = f"<think>{step['think']}</think>" + text
        if step.get("tool_call"):
            text += "<tool_call>" + json.dumps(step["tool_call"]) + "</tool_call>"
        return text, step.get("chunk_delay", args.chunk_delay)

    def scripted(body):
        messages = body.get("messages") or []
        if script:
            return script_step(messages)
        last = messages[-1] if messages else {}
        if args.agent_tool_call and last.get("role") == "tool":
            return f"The tool said: {tool_text(last)}", args.chunk_delay
        if args.agent_tool_call and body.get("tools"):
            call = args.agent_tool_call
            return (call if args.bare_json else f"<tool_call>{call}</tool_call>"), args.chunk_delay
        return args.reply, args.chunk_delay

    async def chat(request):
        body = await request.json()
        stats["last_request"] = body
        if args.record:
            with open(args.record, "a") as fh:  # noqa: ASYNC230 (a test double: one small line per request)
                fh.write(json.dumps(body) + "\n")
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            # like vLLM's request validation: a 400 in the OpenAI envelope
            error = {"message": "messages: expected a list of objects", "type": "BadRequestError", "code": 400}
            return web.json_response({"error": error}, status=400)
        roles = [m.get("role") for m in messages]
        if args.strict_system and "system" in roles[1:]:  # llama.cpp's answer when a template raises (captured)
            return web.json_response(
                {"error": {"code": 400, "message": TEMPLATE_REFUSAL, "type": "invalid_request_error"}}, status=400
            )
        if args.context and sum(len(json.dumps(m)) // 4 for m in body.get("messages", [])) > args.context:
            prompt = sum(len(json.dumps(m)) // 4 for m in body.get("messages", []))
            error = {  # llama.cpp's overflow answer (captured), with a token count a quarter of the bytes
                "code": 400,
                "message": f"request ({prompt} tokens) exceeds the available context size ({args.context} tokens), "
                "try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": prompt,
                "n_ctx": args.context,
            }
            return web.json_response({"error": error}, status=400)
        served()
        reply, delay = scripted(body)
        usage = {"prompt_tokens": 5, "completion_tokens": len(reply.split()), "total_tokens": 5 + len(reply.split())}
        if not body.get("stream"):
            message = {"role": "assistant", "content": reply}
            stats["completed"] += 1
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 1,
                    "model": args.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            events = [chunk(None, role="assistant")]
            events += [chunk(reply[i : i + args.chunk_size]) for i in range(0, len(reply), args.chunk_size)]
            events.append(chunk(None, finish="stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**chunk(None), "choices": [], "usage": usage})
            for event in events:
                await resp.write(frame(b"data: " + json.dumps(event).encode() + b"\n\n"))
                if delay:
                    await asyncio.sleep(delay)
            await resp.write(frame(b"data: [DONE]\n\n"))
        except (asyncio.CancelledError, ConnectionError):
            stats["aborted"] += 1
            raise
        stats["completed"] += 1
        return resp

    async def sleep(request):
        stats["sleeping"] = True
        stats["sleeps"] = stats.get("sleeps", 0) + 1
        return web.json_response({"level": request.query.get("level")})

    async def wake_up(request):
        stats["sleeping"] = False
        stats["wakes"] = stats.get("wakes", 0) + 1
        return web.json_response({})

    async def embeddings(request):
        await request.json()
        served()
        return web.json_response(
            {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]}
        )

    api_key = next(
        (os.environ[v] for v in ("FAKE_ENGINE_API_KEY", "VLLM_API_KEY", "LLAMA_ARG_API_KEY") if os.environ.get(v)), ""
    )

    @web.middleware
    async def require_key(request, handler):
        if api_key and request.path != "/health" and request.headers.get("Authorization") != f"Bearer {api_key}":
            stats["refused"] = stats.get("refused", 0) + 1
            error = {"message": "Invalid API Key", "type": "authentication_error", "code": 401}
            return web.json_response({"error": error}, status=401)
        return await handler(request)

    app = web.Application(middlewares=[require_key])
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/last-request", last_request)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    if args.sleep_endpoints:
        app.router.add_post("/sleep", sleep)
        app.router.add_post("/wake_up", wake_up)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        print=None,
        handler_cancellation=True,
        handle_signals=not args.ignore_sigterm,
    )


if __name__ == "__main__":
    main()
