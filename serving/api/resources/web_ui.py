"""The web UI (serving/web, plain ES modules and CSS, no build step): its page at `/`, its files under `/ui`.
Open to all like any path outside the API: the page asks for a key and sends it with each API call."""
from __future__ import annotations

from pathlib import Path

import falcon

WEB = Path(__file__).resolve().parents[2] / "web"


class WebPage:
    async def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_HTML
        resp.data = (WEB / "index.html").read_bytes()
        resp.cache_control = ["no-cache"]  # a new release's page is seen at once
