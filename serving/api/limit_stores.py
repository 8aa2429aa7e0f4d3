"""Where the per-key buckets of serving/api/ratelimit.py live, shared by every gunicorn worker: one atomic step per
admission or debit, so two workers never both spend the last request.

    SqliteBuckets   ROOT/limits.db (WAL): read, refill, take and write inside one BEGIN IMMEDIATE transaction, which
                    holds SQLite's write lock across the processes; run in a thread (asyncio.to_thread), since
                    taking the lock may wait for another worker's transaction
    RedisBuckets    one hash per key (`factory:ratelimit:NAME`), changed by one Lua script, which Redis runs with
                    nothing else in between; the clock is Redis's own (TIME), so workers on several hosts agree

Both do exactly what `settle` does (the script is that function in Lua); a bucket is stored as its level and the
time it was last settled, and a key's hash expires once its buckets would be full again.
"""
from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from factory.server_config import LimitsConfig
from factory.sqlite_files import SharedSqlite

KINDS = ("requests", "tokens")


@dataclass(frozen=True)
class Bucket:
    """One limit's state after a step: `limit` per minute, refilling continuously; `level` may be below zero (a
    generation debits its tokens whatever is left, and the debt is paid back by refilling)."""

    limit: int
    level: float

    @property
    def per_second(self) -> float:
        return self.limit / 60

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.level))

    @property
    def used(self) -> int:
        return math.ceil(self.limit - self.level - 1e-9)

    @property
    def reset_s(self) -> float:
        """Until the bucket is full again."""
        return max(0.0, (self.limit - self.level) / self.per_second)

    @property
    def wait_s(self) -> float:
        """Until one unit is available."""
        return max(0.0, (1 - self.level) / self.per_second)


@dataclass(frozen=True)
class Admission:
    requests: Bucket | None  # None: no such limit on the key
    tokens: Bucket | None
    refused: str | None = None  # the limit that refused: "requests" | "tokens"


def settle(saved: dict[str, tuple[float, float]], limits: dict[str, int], now: float,
           debit: int = 0) -> tuple[str | None, dict[str, float]]:
    """The one step of the algorithm. `saved`: kind -> (level, settled at); `limits`: kind -> per minute, for the
    limits the key has. Refill each bucket for the time since it was settled (full when never used); then either
    debit `debit` tokens, or admit a request: refused if a bucket has less than one unit (requests first), else one
    request is taken. Returns the refusing kind (or None) and the new levels."""
    levels = {}
    for kind, limit in limits.items():
        level, at = saved.get(kind, (limit, now))
        levels[kind] = min(limit, level + max(0.0, now - at) * limit / 60)
    refused = None
    if debit:
        levels["tokens"] -= debit
    else:
        refused = next((kind for kind in KINDS if kind in levels and levels[kind] < 1), None)
        if refused is None and "requests" in levels:
            levels["requests"] -= 1
    return refused, levels


def admission(refused: str | None, levels: dict[str, float], limits: dict[str, int]) -> Admission:
    buckets = {kind: Bucket(limits[kind], levels[kind]) if kind in limits else None for kind in KINDS}
    return Admission(buckets["requests"], buckets["tokens"], refused)


def limits_of(rpm: int | None, tpm: int | None) -> dict[str, int]:
    return {kind: limit for kind, limit in zip(KINDS, (rpm, tpm)) if limit}


class BucketStore(Protocol):
    errors: tuple[type[Exception], ...]  # what a store that cannot be reached raises

    async def admit(self, name: str, rpm: int | None, tpm: int | None) -> Admission: ...

    async def debit(self, name: str, tpm: int, tokens: int) -> None: ...

    async def close(self) -> None: ...


def open_store(root: Path, config: LimitsConfig) -> BucketStore:
    return RedisBuckets(config.url) if config.store == "redis" else SqliteBuckets(Path(root) / "limits.db")


class SqliteBuckets:
    errors = (sqlite3.Error,)

    def __init__(self, path: Path):
        self.path = path
        self._file = SharedSqlite(  # a connection per thread of asyncio's pool
            path, "PRAGMA synchronous=NORMAL",  # counters need no fsync per request; WAL keeps them consistent
            "CREATE TABLE IF NOT EXISTS buckets (key TEXT, kind TEXT, level REAL NOT NULL, settled REAL NOT NULL, "
            "PRIMARY KEY (key, kind)) WITHOUT ROWID")

    def _db(self) -> sqlite3.Connection:
        return self._file.connection()

    def _step(self, name: str, limits: dict[str, int], debit: int) -> Admission:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()  # read under the lock, so settled times only move forward
            saved = {kind: (level, at) for kind, level, at in
                     db.execute("SELECT kind, level, settled FROM buckets WHERE key = ?", (name,))}
            refused, levels = settle(saved, limits, now, debit)
            db.executemany("INSERT OR REPLACE INTO buckets (key, kind, level, settled) VALUES (?, ?, ?, ?)",
                           [(name, kind, level, now) for kind, level in levels.items()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return admission(refused, levels, limits)

    async def admit(self, name: str, rpm: int | None, tpm: int | None) -> Admission:
        return await asyncio.to_thread(self._step, name, limits_of(rpm, tpm), 0)

    async def debit(self, name: str, tpm: int, tokens: int) -> None:
        await asyncio.to_thread(self._step, name, {"tokens": tpm}, tokens)

    async def close(self) -> None:
        pass  # connections belong to pool threads and close with them


# `settle`, in Lua. KEYS[1]: the key's hash; ARGV: rpm, tpm (0: no such limit), tokens to debit (0: an admission).
# Returns the refusing kind ('' if none) and the new levels ('' for a limit the key does not have).
SETTLE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local limits = {requests = tonumber(ARGV[1]), tokens = tonumber(ARGV[2])}
local debit = tonumber(ARGV[3])
local levels = {}
for _, kind in ipairs({'requests', 'tokens'}) do
  local limit = limits[kind]
  if limit > 0 then
    local saved = redis.call('HMGET', KEYS[1], kind, kind .. '_at')
    local level = limit
    if saved[1] then
      level = math.min(limit, tonumber(saved[1]) + math.max(0, now - tonumber(saved[2])) * limit / 60)
    end
    levels[kind] = level
  end
end
local refused = ''
if debit > 0 then
  levels.tokens = levels.tokens - debit
elseif levels.requests and levels.requests < 1 then
  refused = 'requests'
elseif levels.tokens and levels.tokens < 1 then
  refused = 'tokens'
elseif levels.requests then
  levels.requests = levels.requests - 1
end
local ttl = math.max(1, redis.call('TTL', KEYS[1]))  -- a debit must not shorten the requests bucket's life
for kind, level in pairs(levels) do
  redis.call('HSET', KEYS[1], kind, tostring(level), kind .. '_at', tostring(now))
  ttl = math.max(ttl, math.ceil((limits[kind] - level) * 60 / limits[kind]) + 1)
end
redis.call('EXPIRE', KEYS[1], ttl)
return {refused, tostring(levels.requests or ''), tostring(levels.tokens or '')}
"""


class RedisBuckets:
    PREFIX = "factory:ratelimit:"

    def __init__(self, url: str):
        import redis.asyncio
        import redis.exceptions

        self.errors = (redis.exceptions.RedisError, OSError)
        # a pool per worker; it connects on first use, from the worker's own event loop
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.script = self.client.register_script(SETTLE)

    async def _step(self, name: str, limits: dict[str, int], debit: int) -> Admission:
        args = [limits.get("requests", 0), limits.get("tokens", 0), debit]
        refused, *levels = [v.decode() for v in await self.script(keys=[self.PREFIX + name], args=args)]
        found = {kind: float(level) for kind, level in zip(KINDS, levels) if level}
        return admission(refused or None, found, limits)

    async def admit(self, name: str, rpm: int | None, tpm: int | None) -> Admission:
        return await self._step(name, limits_of(rpm, tpm), 0)

    async def debit(self, name: str, tpm: int, tokens: int) -> None:
        await self._step(name, {"tokens": tpm}, tokens)

    async def close(self) -> None:
        await self.client.aclose()
