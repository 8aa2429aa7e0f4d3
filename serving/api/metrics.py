"""What the API layer measures: requests by route, method and status, and the tokens each generation's usage
reported, by model and key. Module-level prometheus_client metrics, added up across gunicorn workers like every
other (see `serving.inference.metrics`); GET /metrics is `resources/metrics.py`.

Labels are bounded: a route is Falcon's URI template (`/v1/models/{model_id}`), never the path a client sent, and
every path no route matches is `unmatched`; methods Falcon does not know are `other`; the model is an id the catalog
resolved (an unknown one fails before any usage); a key is its name, never its secret.
"""
from __future__ import annotations

import falcon
from falcon.routing import CompiledRouter
from prometheus_client import Counter

from serving.api.render.openai import Usage
from serving.logs import key_name

UNMATCHED = "unmatched"

requests_total = Counter("factory_requests", "HTTP requests answered, by route template, method and status",
                         ["route", "method", "status"])
prompt_tokens = Counter("factory_prompt_tokens", "Prompt tokens of generations, as their usage reported",
                        ["model", "key"])
completion_tokens = Counter("factory_completion_tokens", "Completion tokens of generations, as their usage reported",
                            ["model", "key"])


class RequestMetrics:
    """Count every answered request by its route, and the tokens of every generation (a usage listener).

    Goes after `RequestContext` (which creates `req.context.usage_listeners`). `router` is the app's: a request
    refused before routing (a body too large, a missing key) has no `uri_template` yet, so its route is looked up
    here, and still counts under its own route rather than `unmatched`.
    """

    def __init__(self, router: CompiledRouter):
        self.router = router

    async def process_request(self, req, resp):
        async def count_tokens(usage: Usage) -> None:
            labels = (req.context.get("model") or "", key_name.get() or "")
            prompt_tokens.labels(*labels).inc(usage.prompt_tokens)
            completion_tokens.labels(*labels).inc(usage.completion_tokens)

        req.context.usage_listeners.append(count_tokens)

    async def process_response(self, req, resp, resource, req_succeeded):
        route = req.uri_template
        if route is None and (found := self.router.find(req.path)) is not None:
            route = found[3]
        method = req.method if req.method in falcon.HTTP_METHODS else "other"
        requests_total.labels(route or UNMATCHED, method, str(resp.status_code)).inc()
