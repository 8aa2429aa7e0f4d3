"""API keys at the door: a request's key becomes its principal (`req.context.key`), or the request is refused.

Which routes need which scope (`admin` may do everything):

    /health, /ready, /openapi.json, /docs       open (probes and the API's own description)
    /v1/files..., /v1/fine_tuning/..., /fine-tune   fine-tune
    every other /v1/... route, /chat            inference (models, chat, completions, embeddings, ...)
    /metrics, /v1/admin/...                     admin (Prometheus can send a bearer token; the UI's changes)
    anything else (an unknown path, static UI)  open: it serves nothing of the API

The WebSocket /v1/events never passes through here (Falcon runs HTTP middleware for HTTP only): it checks the
single-use ticket that POST /v1/events/tickets (inference scope) issued (serving/api/resources/events.py).

Keys are required when server config `auth.keys` is `required`, or `required_if_any` (the default) and
`factory keys create` has made at least one. The key comes as `Authorization: Bearer KEY` (OpenAI's clients) or
`x-api-key: KEY` (Anthropic-style clients). CORS preflights (OPTIONS) carry no credentials by design, so they pass;
the request they announce is checked.

Refusals: no key, an unknown or revoked one -> 401 `invalid_api_key`; a key without the route's scope -> 403
`insufficient_scope`. Neither message repeats what the client sent, so a secret never lands in a response or a log.
"""
from __future__ import annotations

from factory.keys import KeyStore
from serving.api.errors import APIError
from serving.logs import key_name

OPEN = ("/health", "/ready", "/openapi.json", "/docs")
FINE_TUNE = ("/v1/files", "/v1/fine_tuning", "/fine-tune")
INFERENCE = ("/v1", "/chat")
ADMIN = ("/v1/admin",)


def scope_needed(path: str) -> str | None:
    """The scope a path needs, or None when it is open to all."""
    def under(roots: tuple[str, ...]) -> bool:  # a root and what lies below it, not /v1/filesystem for /v1/files
        return any(path == root or path.startswith(root + "/") for root in roots)

    if under(OPEN):
        return None
    if path == "/metrics" or under(ADMIN):
        return "admin"
    if under(FINE_TUNE):
        return "fine-tune"
    if under(INFERENCE):
        return "inference"
    return None


def presented_key(req) -> str | None:
    """The key a request carries: a bearer token, or x-api-key."""
    authorization = req.get_header("Authorization")
    if authorization:
        kind, _, token = authorization.partition(" ")
        return token.strip() if kind.lower() == "bearer" and token.strip() else None
    return req.get_header("X-Api-Key") or None


class Auth:
    """Falcon middleware: look the key up for every request (one indexed SQLite read, well under a millisecond, so
    it runs on the event loop), which is what makes a revocation count from the next request on every worker."""

    def __init__(self, keys: KeyStore, mode: str = "required_if_any"):
        self.keys, self.mode = keys, mode

    async def process_request(self, req, resp):
        req.context.key = None
        key_name.set(None)  # a fresh request has no principal until its key is checked
        scope = scope_needed(req.path)
        if req.method == "OPTIONS" or scope is None:
            return
        if self.mode == "required_if_any" and not self.keys.any():
            return
        secret = presented_key(req)
        key = self.keys.find(secret) if secret else None
        if key is None:
            raise APIError(401, "Incorrect API key provided." if secret else
                           "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (or 'x-api-key: "
                           "KEY'); `factory keys create` makes one.", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        req.context.key, req.context.key_name = key, key.name
        key_name.set(key.name)
        if not key.allows(scope):
            raise APIError(403, f"The key {key.name!r} has the {key.scope!r} scope; this route needs {scope!r} (or "
                                f"admin).", code="insufficient_scope")
