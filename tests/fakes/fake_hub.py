"""A fake Hugging Face Hub for tests: the endpoints the real ``huggingface_hub`` client calls, on loopback.

Point ``HF_ENDPOINT`` at it. Serves, for the repositories it is given (``{repo_id: {filename: bytes or Path}}``):

- ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true``): repo info with ``siblings`` (size, LFS sha256);
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: ``ETag``/``X-Linked-Etag``, ``X-Repo-Commit``, ``X-Linked-Size``,
  ``Accept-Ranges`` and byte ranges (``Range: bytes=N-`` for resumed downloads, ``bytes=N-M`` for a file's first bytes);
- 401 with ``X-Error-Code: GatedRepo`` for a gated repo asked without ``Authorization: Bearer <token>``;
- 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``.

Fault and speed knobs (attributes, changeable while running): ``rate_bytes_per_s`` (0 = as fast as possible),
``cut_after_bytes`` (close the connection once, after sending that many bytes of a weight file),
``corrupt_next`` (change one byte of the next weight file served),
``downloads`` (every GET of a file, with its Range; ``file_downloads`` without header reads), ``info_requests``.

Hostile knobs (a mirror that lies, or someone in the middle of a plain-http one): ``extra_siblings`` (more
listing entries per repo, e.g. ``{"rfilename": "../../x.gguf", "size": 9}``), ``commit`` (the listing's
``sha`` and ``X-Repo-Commit``), ``etag`` (the ``ETag`` of every file answer), and ``redirect_base`` (every
weight file answered with a 302 to ``{redirect_base}/{repo}/{file}``, which :meth:`cdn_app` serves on another
port while recording the ``Authorization`` it receives in ``cdn_authorizations``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

COMMIT = "a" * 40
_CHUNK = 256 * 1024


@dataclass
class _File:
    name: str
    data: bytes | None
    path: Path | None
    size: int
    sha256: str

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        assert self.path is not None
        with self.path.open("rb") as fh:
            fh.seek(start)
            return fh.read(end - start)


@dataclass
class FakeHub:
    """The hub's content and knobs; :meth:`app` builds the aiohttp application."""

    repos: dict[str, dict[str, bytes | Path]]
    gated: dict[str, str] = field(default_factory=dict)  # repo -> the token that opens it
    rate_bytes_per_s: int = 0
    cut_after_bytes: int = 0
    corrupt_next: bool = False  # serve the next weight file with one byte changed (its checksum then fails)
    downloads: list[tuple[str, str]] = field(default_factory=list)  # (repo/file, Range header)
    info_requests: int = 0
    extra_siblings: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    commit: str = COMMIT
    etag: str = ""
    redirect_base: str = ""
    cdn_authorizations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._files: dict[str, dict[str, _File]] = {}
        for repo, files in self.repos.items():
            entries = {}
            for name, content in files.items():
                if isinstance(content, Path):
                    digest = hashlib.sha256()
                    with content.open("rb") as fh:
                        while block := fh.read(1 << 20):
                            digest.update(block)
                    entries[name] = _File(name, None, content, content.stat().st_size, digest.hexdigest())
                else:
                    entries[name] = _File(name, content, None, len(content), hashlib.sha256(content).hexdigest())
            self._files[repo] = entries

    @property
    def file_downloads(self) -> list[tuple[str, str]]:
        """``downloads`` without the reads of a file's first bytes (``Range: bytes=0-N``, how a neuron reads a
        GGUF header or a config.json before deciding to download)."""
        return [d for d in self.downloads if not re.fullmatch(r"bytes=0-\d+", d[1])]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(r"/api/models/{repo:[^/]+/[^/]+}", self._info)
        app.router.add_get(r"/api/models/{repo:[^/]+/[^/]+}/revision/{rev}", self._info)
        app.router.add_route("*", r"/{repo:[^/]+/[^/]+}/resolve/{rev}/{file:.+}", self._resolve)
        return app

    def cdn_app(self) -> web.Application:
        """Where ``redirect_base`` points: the same files at ``/{repo}/{file}``, recording ``Authorization``."""
        app = web.Application()
        app.router.add_route("*", r"/{repo:[^/]+/[^/]+}/{file:.+}", self._cdn)
        return app

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        self.cdn_authorizations.append(request.headers.get("Authorization", ""))
        return await self._serve(request, request.match_info["repo"], request.match_info["file"], redirect=False)

    # ------------------------------------------------------------------------------------------ handlers

    def _refusal(self, request: web.Request, repo: str) -> web.Response | None:
        if repo not in self._files:
            return _error(404, "RepoNotFound", f"Repository {repo} not found")
        token = self.gated.get(repo)
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            return _error(401, "GatedRepo", f"Access to model {repo} is restricted. You must be authenticated.")
        rev = request.match_info.get("rev", "main")
        if rev not in ("main", COMMIT, self.commit):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return None

    async def _info(self, request: web.Request) -> web.Response:
        self.info_requests += 1
        repo = request.match_info["repo"]
        refusal = self._refusal(request, repo)
        if refusal is not None:
            return refusal
        siblings = []
        for f in self._files[repo].values():
            entry: dict[str, object] = {"rfilename": f.name, "size": f.size, "blobId": f.sha256[:40]}
            if _is_lfs(f.name):
                entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(entry)
        siblings += self.extra_siblings.get(repo, [])
        return web.json_response(
            {
                "id": repo,
                "modelId": repo,
                "sha": self.commit,
                "private": False,
                "gated": "manual" if repo in self.gated else False,
                "disabled": False,
                "tags": [],
                "siblings": siblings,
            }
        )

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo, name = request.match_info["repo"], request.match_info["file"]
        refusal = self._refusal(request, repo)
        if refusal is not None:
            return refusal
        return await self._serve(request, repo, name, redirect=bool(self.redirect_base))

    async def _serve(self, request: web.Request, repo: str, name: str, *, redirect: bool) -> web.StreamResponse:
        f = self._files.get(repo, {}).get(name)
        if f is None:
            return _error(404, "EntryNotFound", f"{name} does not exist on main")
        lfs = _is_lfs(f.name)
        etag = self.etag or (f'"{f.sha256}"' if lfs else f'"{f.sha256[:40]}"')
        headers = {"X-Repo-Commit": self.commit, "ETag": etag, "Accept-Ranges": "bytes"}
        if lfs:
            headers["X-Linked-Etag"] = etag
            headers["X-Linked-Size"] = str(f.size)
            if redirect:
                headers["Location"] = f"{self.redirect_base}/{repo}/{name}"
                return web.Response(status=302, headers=headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(f.size)
            return web.Response(status=200, headers=headers)
        start, end = 0, f.size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(f.size, int(match.group(2)) + 1) if match.group(2) else f.size
        self.downloads.append((f"{repo}/{name}", request.headers.get("Range", "")))
        status = 206 if match else 200
        if match:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        headers["Content-Length"] = str(end - start)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        sent, cut = 0, self.cut_after_bytes if lfs else 0
        position = start
        while position < end:
            block = f.read(position, min(end, position + _CHUNK))
            if self.corrupt_next and lfs:
                self.corrupt_next = False
                block = bytes([block[0] ^ 0xFF]) + block[1:]
            if cut and sent + len(block) > cut:
                self.cut_after_bytes = 0  # one interruption
                await response.write(block[: cut - sent])
                assert request.transport is not None
                request.transport.close()  # the interruption: the client sees the body end early
                return response
            await response.write(block)
            sent += len(block)
            position += len(block)
            if self.rate_bytes_per_s:
                await asyncio.sleep(len(block) / self.rate_bytes_per_s)
        await response.write_eof()
        return response


def _is_lfs(name: str) -> bool:
    return name.endswith((".gguf", ".safetensors", ".bin"))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": message}, status=status, headers={"X-Error-Code": code, "X-Error-Message": message}
    )


def point_huggingface_hub_at(monkeypatch, endpoint: str) -> None:
    """Make this process's ``huggingface_hub`` (which reads ``HF_ENDPOINT`` at import) and its children use
    ``endpoint``."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def spawn(port: int, files: dict[str, tuple[str, Path]], *, rate: int = 0):
    """Start this module as a process serving ``files`` (``{"org/name": ("file name", path)}``, one file per
    repo) on ``port``; the caller stops it. Returns the ``Popen``."""
    import subprocess
    import sys

    argv = [sys.executable, __file__, "--port", str(port), "--rate", str(rate)]
    for repo, (name, path) in files.items():
        argv += ["--file", f"{repo}={name}:{path}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    """``python tests/fakes/fake_hub.py --port P --file REPO=NAME:PATH … [--rate BYTES_PER_S]``: serve on loopback."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", action="append", default=[], help="org/name=filename:/path/on/disk")
    parser.add_argument("--rate", type=int, default=0)
    args = parser.parse_args()
    repos: dict[str, dict[str, bytes | Path]] = {}
    for spec in args.file:
        repo, _, rest = spec.partition("=")
        name, _, path = rest.partition(":")
        repos.setdefault(repo, {})[name] = Path(path)
    hub = FakeHub(repos=repos, rate_bytes_per_s=args.rate)
    print(f"fake hub on 127.0.0.1:{args.port}", flush=True)
    web.run_app(hub.app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
