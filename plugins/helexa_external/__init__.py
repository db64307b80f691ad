"""helexa harness for OpenAI-compatible servers that already run (started by hand, or for benchmarks).

No process is managed: "loading" checks that the server answers and records its URL; "unloading" forgets it.
The model's ``source`` is the server's base URL (``http://127.0.0.1:8080/v1``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import msgspec

from helexa import Harness, HarnessState, Inventory, ModelSpec, PlacementPlan, PreflightError, hookimpl

__all__ = ["External", "ExternalOptions"]


class ExternalOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-model options of an external server."""

    health_path: str = "/health"
    """Path (on the server's root) that answers 200 when it is ready; empty = GET {source}/models."""
    timeout_s: float = 10.0
    """How long the readiness check may take."""


class External(Harness):
    """An OpenAI-compatible server helexa does not start."""

    name = "external"
    Options = ExternalOptions
    request_source = False  # a URL: only the neuron's own [[models]] may name one
    tasks = frozenset({"chat", "embed", "rerank"})  # whatever the server serves

    def __init__(self, context: object = None) -> None:
        super().__init__(context)  # type: ignore[arg-type]
        self._urls: dict[str, str] = {}

    async def preflight(self, spec: ModelSpec, inventory: Inventory) -> PlacementPlan:
        """The source must be an http(s) URL; nothing else is checked before the load."""
        self.parse_options(spec.options, model_id=spec.model_id)
        url = urlsplit(spec.source)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise PreflightError(
                "source_missing",
                spec.model_id,
                f"source {spec.source!r} is not a URL",
                "set source to the server's OpenAI base URL, e.g. http://127.0.0.1:8080/v1",
            )
        return PlacementPlan(source=spec.source.rstrip("/"))

    async def load(self, spec: ModelSpec, plan: PlacementPlan) -> str:
        """Check that the server answers, then remember it."""
        options = msgspec.convert(spec.options, ExternalOptions)
        base = plan.source
        root = base.removesuffix("/v1")
        probe = f"{root}{options.health_path}" if options.health_path else f"{base}/models"
        timeout = aiohttp.ClientTimeout(total=options.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(probe) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"{probe} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RuntimeError(f"{probe} is not reachable: {exc}") from None
        self._urls[spec.model_id] = base
        return base

    async def unload(self, model_id: str) -> None:
        """Forget the server (it keeps running)."""
        self._urls.pop(model_id, None)

    async def state(self, model_id: str) -> HarnessState:
        """``ready`` once loaded."""
        return HarnessState.READY if model_id in self._urls else HarnessState.STOPPED


@hookimpl
def register_harnesses(register) -> None:  # noqa: ANN001
    """Register the external harness."""
    register(External)
