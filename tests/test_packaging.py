"""The RPM spec and systemd units agree with the CLI, the version and the files the repository ships."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib

import pytest

from helexa.__about__ import __version__
from helexa.cli.commands import cli
from tests.conftest import ROOT

SPEC = (ROOT / "rpm" / "helexa.spec").read_text()


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(ROOT / "rpm" / name)
    return parser


@pytest.mark.parametrize(("name", "role"), [("helexa-gateway.service", "gateway"), ("helexa-neuron.service", "neuron")])
def test_units_run_a_valid_helexa_command(name, role):
    service = unit(name)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/bin/helexa"
    assert argv[1] == "run"
    params = cli.get_command(None, "run").make_context("run", argv[2:]).params  # raises on unknown options
    assert params["role"] == role
    config = params["config_path"]
    assert f"%{{_sysconfdir}}/helexa/{config.rsplit('/', 1)[1]}" in SPEC, f"the spec must install {config}"
    assert service["KillSignal"] == "SIGTERM"
    assert service["User"] == "helexa"


def test_spec_version_and_packages_match_the_project():
    version = re.search(r"^Version:\s+(\S+)", SPEC, re.M).group(1)
    assert version == __version__
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rsplit("/", 1)[-1] for p in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}
    saved = set(re.search(r"%pyproject_save_files (.+)", SPEC).group(1).split())
    assert saved == packages


def test_every_file_the_spec_installs_exists():
    for source in re.findall(r"install -Dm\d+ (\S+) ", SPEC):
        assert (ROOT / source).is_file(), source
