"""Dependencies point one way: plugins use only helexa's public names; gateway and neuron never meet."""

from __future__ import annotations

import ast
from pathlib import Path

import helexa
from tests.conftest import ROOT


def imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_plugins_import_only_the_public_api():
    for path in (ROOT / "plugins").rglob("*.py"):
        for module, names in imports(path):
            if module == "helexa":
                assert set(names) <= set(helexa.__all__), f"{path}: {names} are not public"
            else:
                assert not module.startswith("helexa."), f"{path} imports {module}"


# What each room of helexa/ may import, by package: dependencies point one way, from the command down to what
# every room shares. The root modules every room may use are listed in SHARED.
SHARED = ("helexa.errors", "helexa.__about__", "helexa.sse", "helexa.config", "helexa.wire")
ROOMS = {
    "cli": None,  # the top: anything
    "gateway": (
        "helexa.gateway",
        "helexa.server",
        "helexa.cluster",
        "helexa.batches",
        "helexa.translate",
        "helexa.bench",
    ),
    "neuron": ("helexa.neuron", "helexa.server", "helexa.engine", "helexa.modelfiles", "helexa.translate"),
    "server": ("helexa.server", "helexa.engine.plugins", "helexa.cluster"),
    "cluster": ("helexa.cluster",),  # the store and what gateways share through it: plain data, no roles
    "batches": ("helexa.batches", "helexa.cluster"),  # the Batch API's data: SQLite, or the cluster's store
    "engine": ("helexa.engine", "helexa.modelfiles"),
    "modelfiles": ("helexa.modelfiles",),
    "translate": ("helexa.translate",),
    "wire": ("helexa.wire",),
    "config": ("helexa.config",),  # reads the file; knows the wire types, nothing of the roles
    "acp": ("helexa.acp",),
    "bench": ("helexa.bench",),
}


def test_each_room_imports_only_the_rooms_below_it():
    rooms = {p.name for p in (ROOT / "helexa").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set(ROOMS), "a new package needs its row in ROOMS"
    for path in (ROOT / "helexa").rglob("*.py"):
        mods = [m for m, _ in imports(path)]
        assert not any(m.startswith(("helexa_", "plugins")) for m in mods), path
        rel = path.relative_to(ROOT / "helexa").parts
        top = rel[0] in ("__init__.py", "__main__.py")  # the public plugin API and ``python -m helexa``
        allowed = ROOMS.get(rel[0]) if len(rel) > 1 else (None if top else SHARED)
        if allowed is None:
            continue
        for module in mods:
            if module.startswith("helexa.") and not module.startswith(allowed + SHARED):
                raise AssertionError(f"{path.relative_to(ROOT)} imports {module}: not a room below it")


def test_the_root_keeps_entry_points_and_what_every_room_shares():
    root = sorted(p.name for p in (ROOT / "helexa").glob("*.py"))
    assert root == [
        "__about__.py",
        "__init__.py",
        "__main__.py",
        "errors.py",
        "sse.py",
    ], "a module of one concern belongs in that concern's package"


def test_clients_use_only_shared_helpers():
    """``helexa acp`` and ``helexa bench`` talk to a gateway over HTTP: no gateway, neuron or daemon internals."""
    shared = ("helexa.sse", "helexa.wire", "helexa.config", "helexa.translate", "helexa.__about__")
    for client in ("acp", "bench"):
        for path in (ROOT / "helexa" / client).rglob("*.py"):
            for module, _ in imports(path):
                if module.startswith("helexa"):
                    assert module.startswith((*shared, f"helexa.{client}")), f"{path} imports {module}"
