"""Upstream providers: OpenAI-compatible servers (Ollama, llama-server, vLLM, OpenAI, another factory server) whose
models this server serves as `provider/model`, each with a health state and failover between its replicas.

States: NOT_CONFIGURED (its `api_key_env` variable is unset: nothing is ever sent), UNHEALTHY (every replica's last
check or request failed; the reason says why), HEALTHY (at least one replica answers). Each replica is checked with
`GET {base_url}/models` at start (all providers concurrently), every `check_interval_s`, and at once after a request
to it fails. A request to an unhealthy provider fails fast: 503 with Retry-After (the next check), no network.

A request goes to the healthy replicas in turn (round robin). A connection error, a timeout before the response or
a 5xx fails over to the next healthy replica at once, or retries one already tried after `backoff_s` (doubling), up
to `retries` more attempts; once a 200 has arrived nothing is retried (its stream may already be at the client).
Upstream 4xx answers become the inference layer's errors (404 UnknownModel, 429 QueueFull, 401/403 Unavailable, other
4xx InvalidRequest with the upstream's message), so the API answers them in its own error shape.

The API key is read from the environment once, sent only as the Authorization header, and scrubbed from any upstream
text passed on; URLs never hold credentials (the config refuses them), so neither logs nor clients see a secret.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from factory.server_config import ProviderConfig
from serving.inference.types import (InvalidRequest, ModelInfo, ProviderStatus, QueueFull, ReplicaStatus,
                                     Unavailable, UnknownModel)

log = logging.getLogger("factory.serving.providers")
HEALTHY, UNHEALTHY, NOT_CONFIGURED = "HEALTHY", "UNHEALTHY", "NOT_CONFIGURED"
CONNECT_S = 5.0  # a replica that does not accept a connection in this long is down (failover should be quick)
STARTUP_WAIT_S = 5.0  # how long a worker's start waits for the first checks; the rest go on in the background
MAX_UPSTREAM_TEXT = 1000  # characters of an upstream's error message passed on

Listener = Callable[[ProviderStatus, str], None]


@dataclass
class Replica:
    url: str
    healthy: bool | None = None  # None: not checked yet
    reason: str | None = "not checked yet"
    checked_at: float | None = None
    listing: dict[str, dict[str, Any]] | None = None  # its last /models answer: id -> model object


class Provider:
    """One configured upstream in one worker: its replicas' health, its HTTP client, admission and failover."""

    def __init__(self, config: ProviderConfig, environ: Mapping[str, str] | None = None,
                 mounts: dict[str, httpx.AsyncBaseTransport] | None = None, on_change: Listener | None = None):
        self.config, self.name = config, config.name
        environ = os.environ if environ is None else environ
        self._secret = (environ.get(config.api_key_env) or None) if config.api_key_env else None
        self.not_configured = (f"the environment variable {config.api_key_env} (api_key_env) is not set"
                               if config.api_key_env and not self._secret else None)
        self.replicas = [Replica(url) for url in config.base_urls]
        self.mounts, self.on_change = mounts, on_change
        self.client: httpx.AsyncClient | None = None
        self.state = NOT_CONFIGURED if self.not_configured else UNHEALTHY
        self.changed_at = time.time()
        self.in_flight = 0
        self.next_check_at = time.monotonic()
        self._turn = 0
        self._reported = False  # the first check's outcome is logged whatever it is
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the client and check every replica; then keep checking in the background."""
        if self.not_configured:
            log.warning("provider %s: %s", self.name, self.not_configured,
                        extra={"fields": {"provider": self.name, "state": self.state}})
            return
        headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
        self.client = httpx.AsyncClient(
            headers=headers, mounts=self.mounts,
            timeout=httpx.Timeout(self.config.timeout_s, connect=min(CONNECT_S, self.config.timeout_s)),
            # One connection per request in flight (a stream holds its connection) plus room for the checks.
            limits=httpx.Limits(max_connections=self.config.max_concurrency + len(self.replicas),
                                max_keepalive_connections=self.config.max_concurrency))
        first = asyncio.ensure_future(self.check())
        self._watcher = asyncio.ensure_future(self._watch(first))
        await asyncio.wait([first], timeout=STARTUP_WAIT_S)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    async def _watch(self, first: asyncio.Future) -> None:
        await asyncio.gather(first, return_exceptions=True)
        while True:
            self.next_check_at = time.monotonic() + self.config.check_interval_s
            try:  # a failed request wakes the watcher early: "checked on request failures"
                await asyncio.wait_for(self._wake.wait(), self.config.check_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.check()
            except Exception:  # a bug here must not end the checks for the worker's lifetime
                log.exception("provider %s: health check failed unexpectedly", self.name)

    # ------------------------------------------------------------ health

    async def check(self) -> None:
        """Check every replica concurrently, then update the provider's state."""
        await asyncio.gather(*(self._check(replica) for replica in self.replicas))
        self._update()

    async def _check(self, replica: Replica) -> None:
        try:
            response = await self.client.get(f"{replica.url}/models")
        except httpx.HTTPError as exc:
            return self._mark(replica, False, describe_error(exc))
        if response.status_code != 200:
            return self._mark(replica, False, f"GET /models answered {response.status_code}"
                                              + self._said(response.status_code, response.content))
        try:
            replica.listing = {str(model["id"]): model for model in response.json()["data"]}
        except (ValueError, KeyError, TypeError):
            return self._mark(replica, False, "GET /models did not answer an OpenAI model list")
        self._mark(replica, True, None)

    def _mark(self, replica: Replica, healthy: bool, reason: str | None) -> None:
        replica.healthy, replica.reason, replica.checked_at = healthy, reason, time.time()

    def _update(self) -> None:
        """Derive the provider's state from its replicas'; log a change and tell the listener."""
        if self.not_configured:
            return
        state = HEALTHY if any(r.healthy for r in self.replicas) else UNHEALTHY
        if state == self.state and self._reported:
            return
        previous, self.state, self._reported = self.state, state, True
        if state != previous:
            self.changed_at = time.time()
        status = self.status()
        log.log(logging.INFO if state == HEALTHY else logging.WARNING, "provider %s: %s -> %s%s", self.name,
                previous, state, f" ({status.reason})" if status.reason else "",
                extra={"fields": {"provider": self.name, "state": state, "previous": previous,
                                  "reason": status.reason}})
        if self.on_change is not None and state != previous:
            self.on_change(status, previous)

    def failed(self, replica: Replica, reason: str, *, down: bool) -> None:
        """A request to `replica` failed: `down` (it could not be reached) marks it unhealthy now; either way the
        watcher checks it at once."""
        if down:
            self._mark(replica, False, reason)
            self._update()
        self._wake.set()

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.next_check_at - time.monotonic()))

    @property
    def reason(self) -> str | None:
        if self.not_configured:
            return self.not_configured
        if self.state == HEALTHY:
            return None
        return "; ".join(f"{r.url}: {r.reason}" for r in self.replicas)

    def status(self) -> ProviderStatus:
        return ProviderStatus(name=self.name, state=self.state, reason=self.reason, models=self.models(),
                              changed_at=self.changed_at,
                              replicas=[ReplicaStatus(url=r.url, state=HEALTHY if r.healthy else UNHEALTHY,
                                                      reason=r.reason, checked_at=r.checked_at)
                                        for r in self.replicas])

    # ------------------------------------------------------------ models

    def _listing(self) -> dict[str, dict[str, Any]]:
        """Every model the replicas last listed (a replica now down keeps its last list: models stay listed, with the
        provider's state, rather than vanishing while it restarts)."""
        found: dict[str, dict[str, Any]] = {}
        for replica in self.replicas:
            found.update(replica.listing or {})
        return found

    def models(self) -> list[str]:
        names = list(self.config.models)
        if self.config.discover:
            names += sorted(set(self._listing()) - set(names))
        return names

    def knows(self, model: str) -> bool:
        return model in self.config.models or (self.config.discover and model in self._listing())

    def describe(self, model: str) -> ModelInfo:
        model_id = f"{self.name}/{model}"
        if not self.knows(model):
            raise UnknownModel(model_id, f"provider {self.name} lists no model {model!r}")
        listed = self._listing().get(model, {})
        context = listed.get("context_length") or listed.get("max_model_len") or 0
        task = listed.get("task") if listed.get("task") in ("chat", "embedding") else "chat"
        return ModelInfo(id=model_id, ref=model_id, name=model_id, version=0,
                         created=listed.get("created") if isinstance(listed.get("created"), int) else 0,
                         aliases=[], formats=[], quantization={},
                         context_length=context if isinstance(context, int) else 0, engine="remote",
                         loaded=self.state == HEALTHY,
                         extra={"owned_by": self.name, "state": self.state, "task": task,
                                "capabilities": upstream_capabilities(listed.get("capabilities"), task)})

    # ------------------------------------------------------------ requests

    def usable(self, model: str) -> None:
        """Raise what a request for `model` would meet now: not configured, unhealthy (fail fast), unknown."""
        model_id = f"{self.name}/{model}"
        if self.not_configured:
            raise Unavailable(f"provider {self.name} is not configured: {self.not_configured}",
                              code="provider_not_configured")
        if self.state != HEALTHY:
            raise Unavailable(f"provider {self.name} is unhealthy: {self.reason}", retry_after_s=self.retry_after_s(),
                              code="provider_unhealthy")
        if not self.knows(model):
            raise UnknownModel(model_id, f"provider {self.name} lists no model {model!r}")

    def admit(self) -> Callable[[], None]:
        """Take one of the provider's `max_concurrency` places; returns its release (idempotent)."""
        if self.in_flight >= self.config.max_concurrency:
            raise QueueFull(1, f"provider {self.name} has {self.config.max_concurrency} requests in flight from this "
                               f"worker (max_concurrency); retry shortly")
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released, self.in_flight = True, self.in_flight - 1
        return release

    async def send(self, path: str, body: dict[str, Any], model_id: str) -> tuple[httpx.Response, Replica]:
        """POST `body` to `path` and return the streaming response once it is a 200, with the replica that gave it;
        failover and retries as the module says. The caller closes the response."""
        order = self._order()
        tried: set[str] = set()
        failures: list[str] = []
        for attempt in range(self.config.retries + 1):
            replica = next((r for r in order[attempt % len(order):] + order if r.healthy), None) if order else None
            if replica is None:
                break
            if replica.url in tried:  # a retry on a replica that just failed: give it a moment, more each time
                await asyncio.sleep(self.config.backoff_s * 2 ** (len(failures) - 1))
            tried.add(replica.url)
            try:
                response = await self.client.send(self.client.build_request("POST", replica.url + path, json=body),
                                                  stream=True)
            except httpx.HTTPError as exc:
                reason = describe_error(exc)
                failures.append(f"{replica.url}: {reason}")
                self.failed(replica, reason, down=True)
                continue
            if response.status_code == 200:
                return response, replica
            content = await response.aread()
            await response.aclose()
            if response.status_code >= 500:
                failures.append(f"{replica.url}: HTTP {response.status_code}{self._said(response.status_code, content)}")
                self.failed(replica, failures[-1], down=False)
                continue
            raise self._refusal(replica, response, content, model_id)
        tail = f": {'; '.join(failures)}" if failures else f": {self.reason}"
        raise Unavailable(f"provider {self.name} could not answer{tail}", retry_after_s=self.retry_after_s(),
                          code="provider_unavailable")

    def _order(self) -> list[Replica]:
        """The replicas, starting from the next one in turn (round robin over requests)."""
        self._turn = (self._turn + 1) % len(self.replicas)
        return self.replicas[self._turn:] + self.replicas[:self._turn]

    def _refusal(self, replica: Replica, response: httpx.Response, content: bytes, model_id: str) -> Exception:
        """An upstream 4xx as the inference layer's error."""
        status = response.status_code
        message, param, code = upstream_error(content)
        message = self.scrub(message)
        if status in (401, 403):  # our credentials are at fault, not the client's request: never echo them
            self.failed(replica, f"HTTP {status}", down=False)  # its check will say UNHEALTHY, with the reason
            return Unavailable(f"provider {self.name} refused this server's credentials (HTTP {status})",
                               code="provider_auth_failed")
        if status == 404:
            return UnknownModel(model_id, f"provider {self.name}: {message}")
        if status == 429:
            retry = response.headers.get("retry-after", "")
            return QueueFull(int(retry) if retry.isdigit() else 1,
                             f"provider {self.name} is rate limiting this server: {message}")
        return InvalidRequest(f"provider {self.name}: {message}", param=param, code=code)

    def _said(self, status: int, content: bytes) -> str:
        if status in (401, 403):
            return " (its API key was refused)"
        message = self.scrub(upstream_error(content)[0])
        return f": {message}" if message else ""

    def scrub(self, text: str) -> str:
        """`text` without this provider's secret (an upstream may echo the key it was sent)."""
        text = text[:MAX_UPSTREAM_TEXT]
        return text.replace(self._secret, "***") if self._secret else text


class ProviderSet:
    """Every configured provider of one worker, by name; listeners hear every state change."""

    def __init__(self, configs: list[ProviderConfig], environ: Mapping[str, str] | None = None,
                 mounts: dict[str, httpx.AsyncBaseTransport] | None = None):
        self.listeners: list[Listener] = []
        self.by_name = {config.name: Provider(config, environ, mounts, self._changed) for config in configs}

    def _changed(self, status: ProviderStatus, previous: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(status, previous)
            except Exception:  # a subscriber's bug must not stop the health checks
                log.exception("provider listener failed")

    def get(self, name: str) -> Provider | None:
        return self.by_name.get(name)

    def ids(self) -> list[str]:
        return [f"{provider.name}/{model}" for provider in self.by_name.values() for model in provider.models()]

    def statuses(self) -> list[ProviderStatus]:
        return [provider.status() for provider in self.by_name.values()]

    async def start(self) -> None:
        await asyncio.gather(*(provider.start() for provider in self.by_name.values()))  # concurrently

    async def stop(self) -> None:
        await asyncio.gather(*(provider.stop() for provider in self.by_name.values()))


RELAYED = ("chat", "completions", "fim")  # what requests to a provider may use (tools, response_format and
# embeddings are refused for providers' models)


def upstream_capabilities(listed: Any, task: str) -> list[str]:
    """What an upstream says its model can do (another llm-factory server says it in our words), less what this
    server does not relay; an upstream that does not say: chat and completions for a chat model."""
    if isinstance(listed, list) and all(isinstance(item, str) for item in listed):
        return [item for item in listed if item in RELAYED]
    return [] if task == "embedding" else ["chat", "completions"]


def describe_error(exc: httpx.HTTPError) -> str:
    """A transport error in a few words (never headers: they carry the key)."""
    kind = {httpx.ConnectError: "connection failed", httpx.ConnectTimeout: "connect timeout",
            httpx.ReadTimeout: "no answer in time", httpx.RemoteProtocolError: "connection closed",
            httpx.ReadError: "connection broken"}.get(type(exc), type(exc).__name__)
    detail = str(exc).strip()
    return f"{kind}: {detail}" if detail else kind


def upstream_error(content: bytes) -> tuple[str, str | None, str | None]:
    """(message, param, code) from an upstream's error body: OpenAI's shape, FastAPI's 422 `detail`, Ollama's
    `{"error": "..."}`, or plain text."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode(errors="replace").strip(), None, None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            return (str(error.get("message") or ""), error.get("param") if isinstance(error.get("param"), str) else None,
                    code if isinstance(code, str) else None)
        if isinstance(error, str):
            return error, None, None
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI's validation errors: [{loc: ["body", "field"], msg}]
            parts = [(".".join(str(p) for p in item.get("loc", [])[1:]), str(item.get("msg", "")))
                     for item in detail if isinstance(item, dict)]
            return "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in parts), \
                (parts[0][0] or None) if parts else None, None
        if isinstance(detail, str):
            return detail, None, None
    return json.dumps(body)[:MAX_UPSTREAM_TEXT], None, None
