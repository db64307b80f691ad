"""The fleet page in a real browser (Debian's chromium, driven by Playwright): sign in with an admin key, see
the neuron and the demo model, load the second model with its button. A screenshot is kept as an artifact
(``HELEXA_TEST_ARTIFACTS``, default ``test-artifacts/``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, engine_ports
from tests.tools import debian_tool

ADMIN = "sk-admin-for-the-browser"


@pytest.fixture
def fleet_url(demo_fleet):
    return demo_fleet(api_keys=["sk-user"], admin_keys=[ADMIN], port_range=str(engine_ports()))


def test_sign_in_see_the_fleet_and_load_a_model(fleet_url):
    chromium = debian_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("HELEXA_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            first = page.goto(f"{fleet_url}/ui")
            assert first is not None and first.status == 401
            page.fill("input[name=key]", ADMIN)
            page.click("button[type=submit]")
            page.wait_for_selector("tr.neuron")
            assert "local" in page.inner_text("tr.neuron")
            demo = page.inner_text('tr.model[data-model="smollm2-135m-instruct"]')
            assert "loaded" in demo and "local" in demo
            gemma = 'tr.model[data-model="gemma-3-270m"]'
            assert "available" in page.inner_text(gemma)
            with page.expect_navigation(timeout=120_000):
                page.click(f"{gemma} button[value=load]")
            assert "loaded gemma-3-270m on local" in page.inner_text("p.note")
            page.wait_for_function(
                "() => document.querySelector('tr.model[data-model=\"gemma-3-270m\"]').innerText.includes('loaded')",
                timeout=30_000,
            )
            assert ADMIN not in page.content()  # the key is never on the page
            shot = artifacts / "fleet-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"screenshot of the fleet page: {shot}")
        finally:
            browser.close()
