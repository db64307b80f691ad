"""The docs, examples, README and CI stay true to the code."""

from __future__ import annotations

import inspect
import re

import msgspec.inspect as mi

from helexa.config import Config
from helexa.engine import hookspecs
from tests.conftest import ROOT


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```sh\n(.+?)\n```", text, re.S)
    assert match, f"README.md has no {marker} block"
    return match.group(1)


def test_every_hookspec_has_a_heading_in_docs_plugins():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "helexa_spec")]
    assert specs, "no hookspecs found"
    for name in specs:
        assert f"### {name}\n" in doc, f"docs/plugins.md needs a '### {name}' section"


def all_fields(cls: type, prefix: str = "") -> list[str]:
    info = mi.type_info(cls)
    out = []
    for field in info.fields:
        kind = field.type.type if isinstance(field.type, mi.Metadata) else field.type
        if isinstance(kind, mi.ListType):
            kind = kind.item_type
        if isinstance(kind, mi.StructType):
            out += all_fields(kind.cls, f"{prefix}{field.name}.")
        else:
            out.append(f"{prefix}{field.name}")
    return out


def test_every_config_field_is_in_the_full_example():
    example = (ROOT / "config" / "helexa.example.toml").read_text()
    for path in all_fields(Config):
        key = path.rsplit(".", 1)[-1]
        assert re.search(rf"^(# )?{key} = ", example, re.M), f"{path} is missing from config/helexa.example.toml"


def test_every_catalogue_field_is_in_the_models_example():
    example = (ROOT / "config" / "models.example.toml").read_text()
    for path in all_fields(Config):
        if path.startswith("models."):
            key = path.removeprefix("models.")
            assert re.search(rf"^{key} = ", example, re.M), f"{key} is missing from config/models.example.toml"


def test_ci_runs_exactly_the_readme_test_command():
    command = readme_block("test-command")
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines(), ".ci/run must run the README's test command verbatim"
    assert "set -euo pipefail" in ci


def test_readme_main_command_runs_both_roles():
    command = readme_block("main-command")
    assert command.endswith("helexa run --role both")
    assert "pip install -e '.[demo]'" in command
