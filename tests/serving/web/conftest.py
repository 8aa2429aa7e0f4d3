"""A real browser for the web UI's tests: Playwright driving Debian's chromium (`make install` installs it;
Playwright's own download cannot run here). No chromium is a failure, not a skip."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

# The README's screenshots are rewritten only when asked (FACTORY_UPDATE_SCREENSHOTS=1 make test), so a test run
# leaves the tree clean; otherwise they are still taken, into a scratch folder.
DOCS = (Path(__file__).resolve().parents[3] / "docs" if os.environ.get("FACTORY_UPDATE_SCREENSHOTS") == "1"
        else Path(tempfile.mkdtemp(prefix="factory-ui-screenshots-")))
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1200, "height": 900}


@pytest.fixture(scope="module")  # not longer: a started Playwright leaves an event loop in the main thread, which
def browser():                    # makes Prefect's sync-compatible calls in later tests return coroutines
    executable = shutil.which("chromium")
    assert executable, "chromium is not installed: run `make install` (apt-get install chromium)"
    # The suite preloads OpenBLAS (LD_PRELOAD) for MLX; inherited by Playwright's node driver and chromium, it
    # breaks their threads (node: "pthread_create: Invalid argument"). They start without it; servers keep it.
    preload = os.environ.pop("LD_PRELOAD", None)
    try:
        playwright = sync_playwright().start()
    finally:
        if preload is not None:
            os.environ["LD_PRELOAD"] = preload
    launched = playwright.chromium.launch(executable_path=executable)
    yield launched
    launched.close()
    playwright.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=DESKTOP)
    opened = context.new_page()
    errors = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"the page threw: {errors}"


def open_ui(page, url: str, view: str, key: str | None = None) -> None:
    """The UI at `view` with `key` typed into the API key field (kept in localStorage, as a user would)."""
    page.goto(f"{url}/#{view}")
    if key is not None:
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
