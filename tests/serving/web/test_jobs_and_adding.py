"""The web UI's jobs and "add a model" pages in a real browser against the whole stack: a Prefect server, the
deployments, a worker and gunicorn sharing one factory root, the local hub as HF_ENDPOINT. A fine-tune started from
a JSONL file picked in the page runs to the end with its loss curve drawn; a model found on the hub is written as a
spec (a refused one shows file:line), built, published and answers in the playground; a dropped .gguf is published."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from formats.gguf.export import export_gguf
from tests.fixtures.memorise import write_training_file
from tests.serving.conftest import Server, server_with_worker
from tests.serving.web.conftest import DOCS, open_ui

BUILD_TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_mlx, prefect_server, local_hub) -> Server:
    root = tmp_path_factory.mktemp("ui-jobs")
    with server_with_worker(root, tiny_mlx) as server:
        yield server


def test_a_fine_tune_started_from_the_page_runs_with_its_loss_curve(stack, page, tmp_path):
    open_ui(page, stack.url, "jobs")
    expect(page.locator("#ft-model option")).to_contain_text(["default", "tiny"])
    page.select_option("#ft-model", "tiny")
    page.set_input_files("#ft-file", str(write_training_file(tmp_path)))
    page.fill("#ft-suffix", "webui")
    page.select_option("#ft-method", "full")
    page.fill("#ft-iters", "40")
    page.fill("#ft-lr", "0.003")
    page.click("#ft-form button[type=submit]")
    card = page.locator("#ft-list .card").first
    expect(card).to_contain_text("tiny@1 → ")
    expect(card).to_have_attribute("data-status", "succeeded", timeout=BUILD_TIMEOUT_MS)
    expect(card).to_contain_text("tiny-ft-webui@1")
    curve = card.locator("svg polyline")
    expect(curve).to_have_attribute("data-points", re.compile(r"[1-9]\d*"))
    assert len(curve.get_attribute("points").split()) == int(curve.get_attribute("data-points")) > 1
    assert "tiny-ft-webui" in [m.id for m in stack.client.models.list().data]
    page.screenshot(path=str(DOCS / "ui-jobs.png"), full_page=True)


def test_a_refused_spec_shows_file_and_line(stack, page):
    open_ui(page, stack.url, "add")
    page.fill("#spec-yaml", "name: broken\nsource: {hf: tiny/llama}\nformats:\n  - {gguf: {type: q9}}\n")
    page.click("#spec-submit")
    error = page.locator("#spec-error")
    expect(error).to_contain_text("invalid_spec")
    expect(error).to_contain_text("broken.yaml:4: formats[0].gguf.type")


def test_a_model_from_the_hub_is_built_published_and_answers(stack, page):
    open_ui(page, stack.url, "add")
    page.fill("#hub-search", "llama")
    page.click("#hub-form button")
    page.click('#hub-results li[data-repo="tiny/llama"]')
    expect(page.locator("#hub-files")).to_contain_text("config.json")
    page.fill("#spec-name", "hub-tiny")
    page.dispatch_event("#spec-name", "input")
    spec = page.input_value("#spec-yaml")
    assert "name: hub-tiny" in spec and "source: {hf: tiny/llama}" in spec and "{gguf: {type: q8_0}}" in spec
    page.screenshot(path=str(DOCS / "ui-add-model.png"), full_page=True)
    page.click("#spec-submit")
    state = page.locator("#spec-build")
    expect(state).to_contain_text("hub-tiny: build build-")
    expect(state).to_have_attribute("data-status", "published", timeout=BUILD_TIMEOUT_MS)
    expect(state).to_contain_text("hub-tiny@1")
    page.goto(f"{stack.url}/#playground")
    expect(page.locator('#pg-model option[value="hub-tiny"]')).to_have_count(1, timeout=15_000)
    page.select_option("#pg-model", "hub-tiny")
    page.fill("#pg-max-tokens", "8")
    page.fill("#pg-input", "hello")
    page.click("#pg-send")
    expect(page.locator("#pg-state")).to_have_text("done", timeout=60_000)
    assert int(page.locator("#pg-tokens").text_content()) > 0


def test_a_dropped_gguf_is_published(stack, page, tiny_model, tmp_path):
    model_file = tmp_path / "Dropped.F16.gguf"
    export_gguf(tiny_model, model_file, "f16")
    open_ui(page, stack.url, "add")
    page.set_input_files("#gguf-file", str(model_file))
    state = page.locator("#upload-state")
    expect(state).to_contain_text("dropped.f16: build build-")
    expect(state).to_have_attribute("data-status", "published", timeout=BUILD_TIMEOUT_MS)
    assert stack.registry.resolve("dropped.f16").version == 1
