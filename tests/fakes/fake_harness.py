"""A ProcessHarness that runs tests/fakes/fake_engine.py: the real process machinery, a fake engine."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from helexa import ModelSpec, PlacementPlan, ProcessHarness

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


class FakeOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    flags: list[str] = []


class FakeHarness(ProcessHarness):
    name = "fake"
    Options = FakeOptions
    # The fake always runs fake_engine.py; its flags only script that fake, so tests may send them over HTTP.
    load_options = frozenset({"flags"})
    formats = frozenset({"gguf"})
    cpu_ok = True
    tasks = frozenset({"chat", "embed", "rerank"})
    secret_env = "FAKE_ENGINE_API_KEY"  # the fake refuses every route but /health without it, as llama.cpp does

    def command(self, spec: ModelSpec, plan: PlacementPlan, port: int, options: FakeOptions) -> list[str]:
        return [sys.executable, str(FAKE_ENGINE), "--port", str(port), "--model", spec.model_id, *options.flags]
