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


def test_core_never_imports_plugins_and_roles_never_import_each_other():
    for path in (ROOT / "helexa").rglob("*.py"):
        mods = [m for m, _ in imports(path)]
        assert not any(m.startswith(("helexa_", "plugins")) for m in mods), path
        rel = path.relative_to(ROOT / "helexa").parts
        if rel[0] == "gateway":
            assert not any(m.startswith("helexa.neuron") for m in mods), path
        if rel[0] == "neuron":
            assert not any(m.startswith("helexa.gateway") for m in mods), path
        if rel[0] == "translate":
            allowed = ("helexa.errors", "helexa.wire", "helexa.translate")
            assert all(m.startswith(allowed) for m in mods if m.startswith("helexa")), f"{path} must stay pure"
        if rel[0] in ("server", "wire"):
            assert not any(
                m.startswith(("helexa.gateway", "helexa.neuron", "helexa.daemon", "helexa.cli")) for m in mods
            ), path


def test_clients_use_only_shared_helpers():
    """``helexa acp`` talks to a gateway over HTTP: no gateway, neuron or daemon internals."""
    shared = ("helexa.acp", "helexa.sse", "helexa.wire", "helexa.config", "helexa.translate", "helexa.__about__")
    for path in (ROOT / "helexa" / "acp").rglob("*.py"):
        for module, _ in imports(path):
            if module.startswith("helexa"):
                assert module.startswith(shared), f"{path} imports {module}"
