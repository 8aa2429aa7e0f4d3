"""The web UI's playground in a real browser against gunicorn serving the real SmolLM2-135M-Instruct (llama.cpp,
q8_0): a streamed answer with TTFT and tokens/s measured by the page and shown while it streams, the usage's token
count at the end, and Stop aborting an answer mid-stream (the next question still answers)."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.serving.web.conftest import DOCS, open_ui

# Records what the stats line showed each time it changed, to tell "shown while streaming" from "shown at the end".
WATCH_STATS = """() => {
  window.seen = [];
  const read = () => ({state: document.getElementById("pg-state").textContent,
                       ttft: document.getElementById("pg-ttft").textContent,
                       tps: document.getElementById("pg-tps").textContent,
                       tokens: document.getElementById("pg-tokens").textContent,
                       answer: document.querySelector(".msg.assistant:last-child")?.textContent || ""});
  new MutationObserver(() => window.seen.push(read()))
    .observe(document.getElementById("pg-stats"), {subtree: true, childList: true, characterData: true});
}"""


def ask(page, question: str, max_tokens: int, temperature: float = 0) -> None:
    page.fill("#pg-temperature", str(temperature))
    page.fill("#pg-max-tokens", str(max_tokens))
    page.fill("#pg-input", question)
    page.click("#pg-send")


def test_a_streamed_answer_shows_ttft_and_tokens_per_second_while_streaming(smollm2, page):
    open_ui(page, smollm2.url, "playground")
    expect(page.locator("#pg-model option")).to_contain_text(["default", "tiny"])
    page.select_option("#pg-model", "default")
    page.evaluate(WATCH_STATS)
    ask(page, "What is 2 + 2?", max_tokens=48)
    expect(page.locator("#pg-state")).to_have_text("done", timeout=60_000)
    answer = page.locator(".msg.assistant").last.text_content()
    assert "4" in answer
    ttft = page.locator("#pg-ttft").text_content()
    assert re.fullmatch(r"\d+ ms", ttft), ttft
    tokens = int(page.locator("#pg-tokens").text_content())
    assert 1 < tokens <= 48  # the usage chunk's completion_tokens
    assert float(page.locator("#pg-tps").text_content()) > 0
    seen = page.evaluate("window.seen")
    streaming = [s for s in seen if s["state"] == "streaming…" and s["tps"] != "–"]
    assert streaming, "tokens/s was not shown while the answer streamed"
    assert all(re.fullmatch(r"\d+ ms", s["ttft"]) for s in streaming)
    assert any(0 < len(s["answer"]) < len(answer) for s in streaming)  # a partial answer was on screen
    expect(page.locator("#pg-stop")).to_be_disabled()
    page.screenshot(path=str(DOCS / "ui-playground.png"), full_page=True)


def test_stop_aborts_the_answer_and_the_next_question_still_answers(smollm2, page):
    open_ui(page, smollm2.url, "playground")
    page.select_option("#pg-model", "default")
    page.fill("#pg-system", "You are a storyteller.")
    ask(page, "Write a long story about a dragon who learns to cook.", max_tokens=1500, temperature=0.7)
    expect(page.locator("#pg-state")).to_have_text("streaming…", timeout=60_000)
    expect(page.locator("#pg-stop")).to_be_enabled()
    page.click("#pg-stop")
    expect(page.locator("#pg-state")).to_have_text("stopped")
    stopped_at = page.locator(".msg.assistant").last.text_content()
    assert stopped_at
    page.wait_for_timeout(500)  # nothing more arrives once aborted
    assert page.locator(".msg.assistant").last.text_content() == stopped_at
    assert int(page.locator("#pg-tokens").text_content()) < 1500
    ask(page, "What is 2 + 2?", max_tokens=24)
    expect(page.locator("#pg-state")).to_have_text("done", timeout=60_000)
    assert page.locator(".msg.assistant").count() == 2
