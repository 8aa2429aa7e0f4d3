"""Per-key rate limits: requests per minute and tokens per minute (a key's `--rpm` / `--tpm`; none: unlimited),
shared by every gunicorn worker through one store (serving/api/limit_stores.py: SQLite under the factory root, or
Redis when server config says `limits: {store: redis, url: ...}`).

The algorithm: two token buckets per key, each holding up to its per-minute limit and refilling continuously at
limit/60 per second (so a key may burst its whole minute, then proceeds at the steady rate; no window edge lets it
spend twice its limit). Each step on a key's buckets is atomic in the store.

- Admission (every request that carries a key with limits): refill both buckets; refuse if the requests bucket has
  less than one request, or the tokens bucket less than one token (the budget is spent); otherwise take one request.
- Tokens are known only when the generation ends: a listener on `req.context.usage_listeners` then debits the
  prompt and completion tokens, even below zero (a long answer runs into debt, which the refill pays back before
  the key is admitted again).

A refusal is a 429 in OpenAI's shape and words (code `rate_limit_exceeded`, type `requests` or `tokens`, as OpenAI
sends them) with `Retry-After`, counted in `factory_rate_limited_total{key, limit}`. It is not the capacity 429
(`queue_full`: the server is busy, whoever asks). Every response to a request with limits carries OpenAI's headers:
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset: until the bucket is full, e.g. "6m0s"); a limit
the key does not have gets no headers. If the store cannot be reached, keyed requests get 503: a limit that cannot
be checked is not silently lifted.
"""
from __future__ import annotations

import logging
import math

from prometheus_client import Counter

from serving.api.errors import APIError
from serving.api.limit_stores import Admission, Bucket, BucketStore
from serving.api.render.openai import Usage

log = logging.getLogger("factory.serving")

RATE_LIMITED = Counter("factory_rate_limited_total", "Requests refused by a key's rate limit",
                       ["key", "limit"])  # key: the key's name, never its secret
WORDS = {"requests": "requests per minute (RPM)", "tokens": "tokens per minute (TPM)"}


def duration(seconds: float) -> str:
    """OpenAI's duration format: "250ms", "1s", "17.5s", "6m0s", "1h0m0s"."""
    if (ms := round(seconds * 1000)) < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, rest = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return (f"{hours}h{minutes}m" if hours else f"{minutes}m" if minutes else "") + text


def headers(admission: Admission) -> dict[str, str]:
    found = {}
    for kind, bucket in (("requests", admission.requests), ("tokens", admission.tokens)):
        if bucket is not None:
            found |= {f"x-ratelimit-limit-{kind}": str(bucket.limit),
                      f"x-ratelimit-remaining-{kind}": str(bucket.remaining),
                      f"x-ratelimit-reset-{kind}": duration(bucket.reset_s)}
    return found


def refusal(name: str, kind: str, bucket: Bucket) -> APIError:
    message = (f"Rate limit reached for {WORDS[kind]} on key {name}: limit {bucket.limit}, used {bucket.used}. "
               f"Please try again in {duration(bucket.wait_s)}.")
    return APIError(429, message, type_=kind, code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, math.ceil(bucket.wait_s)))})


class RateLimits:
    """Falcon middleware, after Auth (which puts the key on `req.context.key`)."""

    def __init__(self, store: BucketStore):
        self.store = store

    async def process_request(self, req, resp):
        key = req.context.get("key")
        if key is None or (key.rpm is None and key.tpm is None):
            return
        try:
            admission = await self.store.admit(key.name, key.rpm, key.tpm)
        except self.store.errors as exc:
            log.error("rate-limit store unavailable: %s", exc)
            raise APIError(503, "the rate-limit store is unavailable; try again shortly", type_="server_error",
                           code="rate_limit_store_unavailable") from None
        req.context.rate_limits = admission
        if admission.refused:
            RATE_LIMITED.labels(key=key.name, limit=admission.refused).inc()
            raise refusal(key.name, admission.refused, getattr(admission, admission.refused))
        if key.tpm is not None:
            req.context.usage_listeners.append(self.debit_for(key.name, key.tpm))

    def debit_for(self, name: str, tpm: int):
        async def debit(usage: Usage) -> None:
            tokens = usage.prompt_tokens + usage.completion_tokens
            if tokens:
                try:
                    await self.store.debit(name, tpm, tokens)
                except self.store.errors as exc:  # the answer has gone out already: log, do not fail it
                    log.error("could not debit %d tokens from key %s: %s", tokens, name, exc)
        return debit

    async def process_response(self, req, resp, resource, req_succeeded):
        admission = req.context.get("rate_limits")
        if admission is not None:
            resp.set_headers(headers(admission))

    async def process_shutdown(self, scope, event):
        await self.store.close()
