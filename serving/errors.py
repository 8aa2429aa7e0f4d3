"""OpenAI-shaped errors: every failure is `{"error": {"message", "type", "param", "code"}}` with the right status.

Handlers raise `APIError`; Falcon's own errors (unknown route, malformed JSON, ...) are reshaped by the serializer;
anything unexpected becomes a logged 500 `server_error` (and is a bug to fix).
"""
from __future__ import annotations

import logging

import falcon

log = logging.getLogger("factory.serving")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error"}


class APIError(falcon.HTTPError):
    def __init__(self, status: int, message: str, *, type_: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(falcon.code_to_http_status(status), description=message, headers=headers)
        self.type = type_ or TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str, detail: str = "") -> APIError:
    message = f"The model '{model}' does not exist" + (f": {detail}" if detail else "")
    return APIError(404, message, param="model", code="model_not_found")


def queue_full(retry_after_s: int = 1) -> APIError:
    return APIError(429, "The server is busy: the request queue for this model is full; retry shortly",
                    code="queue_full", headers={"Retry-After": str(retry_after_s)})


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    status = exc.status_code
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"error": {
        "message": exc.description or exc.title,
        "type": getattr(exc, "type", None) or TYPES.get(status, "server_error" if status >= 500 else
                                                         "invalid_request_error"),
        "param": getattr(exc, "param", None),
        "code": getattr(exc, "code", None) if isinstance(exc, APIError) else _code_for(exc),
    }}


def _code_for(exc: falcon.HTTPError) -> str | None:
    if isinstance(exc, falcon.MediaMalformedError):
        return "invalid_json"
    if exc.status_code == 404:
        return "not_found"
    return None


async def handle_unexpected(req, resp, exc, params) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise APIError(500, f"internal error ({type(exc).__name__}); the server log has the details",
                   type_="server_error")
