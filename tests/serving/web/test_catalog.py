"""The web UI's models catalog in a real browser against a real gunicorn server with keys required: versions,
aliases, formats and quantization, the validation report with its measured values, lineage; promote and rollback
by an admin key, refused (403 shown) for an inference key; the live events panel reconnecting after a restart."""
from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

from factory.keys import KeyStore
from factory.registry import Registry
from tests.serving.conftest import SERVE, Server, start_server, stop_server
from tests.serving.web.conftest import DOCS, PHONE, open_ui

REPORT = {"formats": [{"format": "gguf-f16", "passed": True, "checks": [
    {"name": "perplexity", "value": 22.555, "threshold": 30, "bound": "max", "passed": True},
    {"name": "tokens_per_second", "value": 412.3, "threshold": 1, "bound": "min", "passed": True}]}]}
LINEAGE = {"source": {"hf": "tiny/llama", "revision": "abc123"}, "trained_tokens": 4096}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_gguf) -> Server:
    root = tmp_path_factory.mktemp("ui-catalog")
    registry = Registry(root / "registry")
    registry.publish("tiny", {"gguf-f16": tiny_gguf}, serve=SERVE)
    registry.publish("tiny", {"gguf-f16": tiny_gguf}, serve=SERVE, report=REPORT, lineage=LINEAGE)
    keys = KeyStore(root)
    running = start_server(root, tiny_gguf, "gguf-f16", FACTORY_SERVE_AUTH_KEYS="required")
    running.root = root
    running.admin = keys.create("ui-admin", "admin")
    running.reader = keys.create("ui-reader", "inference")
    yield running
    stop_server(running.process)


def test_the_catalog_shows_versions_formats_report_and_lineage(served, page):
    open_ui(page, served.url, "models", served.admin)
    card = page.locator('[data-model="tiny"]')
    expect(card.locator("h3")).to_contain_text("tiny")
    expect(card).to_contain_text("latest → 2")
    second = card.locator('tr[data-ref="tiny@2"]')
    expect(second).to_contain_text("gguf f16")
    expect(second).to_contain_text("latest")
    second.locator("summary").click()
    expect(second).to_contain_text("gguf-f16: passed")
    expect(second).to_contain_text("ok 22.555 (max 30)")
    expect(second).to_contain_text("ok 412.3 (min 1)")
    expect(second).to_contain_text('{"hf":"tiny/llama","revision":"abc123"}')
    expect(second).to_contain_text("4096")
    expect(card.locator('tr[data-ref="tiny@1"]')).to_contain_text("—")  # no report for the first one
    page.screenshot(path=str(DOCS / "ui-catalog.png"), full_page=True)


def test_an_admin_promotes_and_rolls_back_from_the_page(served, page):
    open_ui(page, served.url, "models", served.admin)
    card = page.locator('[data-model="tiny"]')
    card.locator('tr[data-ref="tiny@1"] input').fill("prod")
    card.locator('[data-promote="tiny@1"]').click()
    expect(card).to_contain_text("prod → 1")
    card.locator('[data-promote="tiny@2"]').click()  # its alias field says prod too
    expect(card).to_contain_text("prod → 2")
    expect(card.locator('tr[data-ref="tiny@2"]')).to_contain_text("prod")
    assert Registry(served.registry.root).aliases("tiny")["prod"] == 2  # the server did it, not just the page
    card.locator('[data-rollback="prod"]').click()
    expect(card).to_contain_text("prod → 1")
    assert Registry(served.registry.root).aliases("tiny")["prod"] == 1


def test_an_inference_key_sees_the_catalog_but_its_promote_is_refused(served, page):
    open_ui(page, served.url, "models", served.reader)
    card = page.locator('[data-model="tiny"]')
    card.locator('tr[data-ref="tiny@2"] input').fill("canary")
    card.locator('[data-promote="tiny@2"]').click()
    expect(card.locator('[data-error="tiny"]')).to_contain_text("insufficient_scope")
    assert "canary" not in Registry(served.registry.root).aliases("tiny")


def test_without_a_key_the_page_says_what_the_server_said(served, page):
    open_ui(page, served.url, "models")
    expect(page.locator("#cat-error")).to_be_visible()
    expect(page.locator("#cat-error")).to_contain_text(re.compile("key", re.I))


def test_every_view_fits_a_phone(served, browser):
    context = browser.new_context(viewport=PHONE, is_mobile=True)
    phone = context.new_page()
    open_ui(phone, served.url, "models", served.admin)
    expect(phone.locator('[data-model="tiny"]')).to_be_visible()
    for view in ["models", "playground", "jobs", "add", "events"]:
        phone.goto(f"{served.url}/#{view}")
        expect(phone.locator(f"section#{view}")).to_be_visible()
        phone.wait_for_load_state("networkidle")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, f"#{view} scrolls sideways on a phone: {width}px"
    context.close()


def test_live_events_reconnect_after_a_server_restart(served, page):
    """Last in this module: it restarts the server (same port, same root)."""
    open_ui(page, served.url, "events", served.admin)
    badge = page.locator("#live")
    expect(badge).to_have_attribute("data-connections", "1")
    expect(badge).to_have_text("live")
    stop_server(served.process)
    expect(badge).to_contain_text("reconnecting")
    port = int(served.url.rsplit(":", 1)[1])
    restarted = start_server(served.root, served.registry.root, port=port, FACTORY_SERVE_AUTH_KEYS="required")
    served.process = restarted.process
    expect(badge).to_have_attribute("data-connections", "2", timeout=30_000)
    expect(badge).to_have_text("live")
    reply = httpx.post(f"{served.url}/v1/admin/registry/models/tiny/promote", json={"version": 2, "alias": "beta"},
                       headers={"Authorization": f"Bearer {served.admin}"})
    assert reply.status_code == 200, reply.text
    promoted = page.locator('#ev-list li[data-type="registry.promoted"]')
    expect(promoted.first).to_contain_text('"alias":"beta"', timeout=15_000)
