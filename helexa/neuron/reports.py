"""What a neuron tells about itself beyond its models' state: its engines with their versions, what its default
harness means here, and which catalogue models could start now. Reads the model manager; changes nothing but the
manager's ``availability`` notes."""

from __future__ import annotations

import logging

from helexa.neuron.models import ModelManager
from helexa.wire.neuron import AUTO_HARNESS, ModelStatus

__all__ = ["check_availability", "describe_default_harness", "engine_versions"]

logger = logging.getLogger(__name__)


def engine_versions(manager: ModelManager) -> dict[str, str]:
    """Each harness's engine and version (blocking: call in a thread); a harness that fails says nothing."""
    versions = {}
    for name, harness in manager.harnesses.items():
        try:
            versions[name] = harness.engine_version()
        except Exception:  # a third-party harness's bug must not stop the neuron
            logger.exception("harness %r could not tell its engine version", name)
    return versions


def describe_default_harness(manager: ModelManager) -> str:
    """What a model that names no harness gets here, and why (for ``/discovery`` and the log)."""
    if manager.specs.default_harness != AUTO_HARNESS:
        return f"{manager.specs.default_harness} (configured)"
    dense, why_dense = manager.specs.auto_harness("org/model", "")
    gguf, why_gguf = manager.specs.auto_harness("model.gguf", "")
    return f"auto: {dense or 'none'} for safetensors ({why_dense}); {gguf or 'none'} for GGUF ({why_gguf})"


async def check_availability(manager: ModelManager) -> None:
    """Note for every catalogue model not running whether it could start now, needs a download (and how much),
    or cannot be served here (and why — a model too large for the host with nothing else loaded included);
    fetches no weights. Shown by ``/models`` and the gateway."""
    capacity = await manager.capacity()
    for entry in {e.id: e for e in manager.catalogue.values()}.values():
        record = manager.records.get(entry.id)
        if record is not None and record.status != ModelStatus.UNLOADED:
            continue
        spec = manager.specs.complete(entry.spec())
        harness = manager.harnesses.get(spec.harness)
        if harness is None:
            manager.availability[entry.id] = ("unavailable", 0, "harness_not_installed")
            continue
        manager.availability[entry.id] = await manager.sources.availability(spec, harness, capacity)
