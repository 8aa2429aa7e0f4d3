"""OpenAI-shaped errors: every failure is `{"error": {"message", "type", "param", "code"}}` with the right status;
on Anthropic's routes (/v1/messages...) `{"type": "error", "error": {"type", "message"}}` instead, chosen by path
where the body is written (the serializer here, and the transport's answers before Falcon), so middleware's
refusals (auth, rate limits, body size) take the shape of the API the client speaks.

Resources raise `APIError` for what they check themselves; the inference layer's and the job backend's domain
exceptions are mapped here, once, by handlers that `install` registers on the app. Falcon's own errors (unknown
route, malformed JSON, ...) are reshaped by the serializer; anything unexpected becomes a logged 500
`server_error` (and is a bug to fix).
"""
from __future__ import annotations

import logging

import falcon

from serving.inference.types import GenerationFailed, InvalidRequest, QueueFull, Unavailable, UnknownModel
from serving.jobs import JobConflict, JobNotFound, JobsUnavailable

log = logging.getLogger("factory.serving")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


class APIError(falcon.HTTPError):
    def __init__(self, status: int, message: str, *, type_: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(falcon.code_to_http_status(status), description=message, headers=headers)
        self.type = type_ or error_type(status)
        self.param = param
        self.code = code


class BodyTooLarge(Exception):
    def __init__(self, size: int | None, limit: int):
        super().__init__(f"request body of {size} bytes exceeds the {limit}-byte limit" if size is not None
                         else f"the request body exceeds the {limit}-byte limit")


class BodyTimeout(Exception):
    def __init__(self, timeout_s: float):
        super().__init__(f"the request body did not arrive within {timeout_s:g} s")


# Anthropic's error types by status (its 529 overloaded_error is our 503: nothing can serve now, retry later)
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
                   503: "overloaded_error"}
ANTHROPIC_ROOT = "/v1/messages"


def speaks_anthropic(path: str) -> bool:
    return path == ANTHROPIC_ROOT or path.startswith(ANTHROPIC_ROOT + "/")


def anthropic_error(status: int, message: str) -> dict:
    return {"type": "error", "error": {
        "type": ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"),
        "message": message}}


def error_body_for(path: str, status: int, message: str, *, type_: str | None = None, param: str | None = None,
                   code: str | None = None) -> dict:
    """The error body in the shape of the API that `path` belongs to. Anthropic's has no `param`: the message names
    the field when the OpenAI one would only say it in `param`."""
    if speaks_anthropic(path):
        return anthropic_error(status, f"{param}: {message}" if param and param not in message else message)
    return error_body(status, message, type_=type_, param=param, code=code)


def error_type(status: int) -> str:
    return TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(status: int, message: str, *, type_: str | None = None, param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or error_type(status), "param": param, "code": code}}


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.media = error_body_for(req.path, exc.status_code, exc.description or exc.title,
                                type_=getattr(exc, "type", None), param=getattr(exc, "param", None),
                                code=getattr(exc, "code", None) if isinstance(exc, APIError) else _code_for(exc))


def _code_for(exc: falcon.HTTPError) -> str | None:
    if isinstance(exc, falcon.MediaMalformedError):
        return "invalid_json"
    if exc.status_code == 404:
        return "not_found"
    return None


# ---------------------------------------------------------------- domain exceptions -> HTTP


def _as_api_error(exc: Exception) -> APIError:
    match exc:
        case UnknownModel():
            return APIError(404, str(exc), param="model", code="model_not_found")
        case InvalidRequest():
            return APIError(400, str(exc), param=exc.param, code=exc.code)
        case QueueFull():
            return APIError(429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after_s)})
        case Unavailable() | JobsUnavailable():
            retry = getattr(exc, "retry_after_s", None)  # an unhealthy provider: its next health check
            return APIError(503, str(exc), type_="server_error", code=getattr(exc, "code", None),
                            headers={"Retry-After": str(retry)} if retry else None)
        case GenerationFailed():
            return APIError(500, f"generation failed: {exc}", type_="server_error")
        case JobNotFound():
            return APIError(404, str(exc), param="fine_tuning_job_id", code="job_not_found")
        case JobConflict():
            return APIError(400, str(exc), param="fine_tuning_job_id")
        case BodyTooLarge():
            return APIError(413, str(exc), code="request_too_large")
        case BodyTimeout():
            return APIError(408, str(exc), code="request_timeout", headers={"Connection": "close"})
    raise TypeError(f"no mapping for {type(exc).__name__}")


DOMAIN_ERRORS = (UnknownModel, InvalidRequest, QueueFull, Unavailable, GenerationFailed, JobNotFound, JobConflict,
                 JobsUnavailable, BodyTooLarge, BodyTimeout)


async def handle_domain_error(req, resp, exc, params) -> None:
    raise _as_api_error(exc)


async def handle_unexpected(req, resp, exc, params) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise APIError(500, f"internal error ({type(exc).__name__}); the server log has the details",
                   type_="server_error")


def install(app: falcon.asgi.App) -> None:
    """Register the error shape and the mapping of domain exceptions (Falcon picks the most specific handler)."""
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(DOMAIN_ERRORS, handle_domain_error)
    app.set_error_serializer(serialize_error)
