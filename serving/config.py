"""Server settings, read from the environment so gunicorn workers and `factory serve` agree.

    FACTORY_REGISTRY / FACTORY_ROOT   which registry to serve (see factory.settings)
    FACTORY_SERVE_MEMORY_MB           byte budget for loaded models (LRU beyond it)        default 8192
    FACTORY_SERVE_IDLE_TTL_S          unload a model unused this long                        default 900
    FACTORY_SERVE_QUEUE_SIZE          requests waiting per model beyond the batch; then 429   default 64
    FACTORY_SERVE_MAX_BATCH           sequences decoded together per model                    default 16
    FACTORY_SERVE_MAX_BODY_BYTES      larger request bodies get 413                           default 8 MiB
    FACTORY_SERVE_MAX_UPLOAD_BYTES    the same for /v1/files uploads                          default 512 MiB
    FACTORY_SERVE_POLL_S              how often workers look for registry changes            default 0.25
    FACTORY_SERVE_CORS_ORIGINS        comma-separated origins browsers may call from          default none
    FACTORY_SERVE_DEFAULT_MODEL       the model the id `default` names (over specs' aliases)  default none
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from factory.settings import Settings


@dataclass(frozen=True)
class ServerConfig:
    registry: Path
    memory_budget_mb: float = 8192
    idle_ttl_s: float = 900
    queue_size: int = 64
    max_batch: int = 16
    max_body_bytes: int = 8 << 20
    max_upload_bytes: int = 512 << 20
    files: Path = Path(".factory/files")
    poll_interval_s: float = 0.25
    # No cross-origin access unless configured: any web page a user visits could otherwise call this server on
    # 127.0.0.1 (upload files, start fine-tunes).
    cors_origins: tuple[str, ...] = ()
    default_model: str | None = None

    @classmethod
    def from_env(cls) -> "ServerConfig":
        env = os.environ
        return cls(
            registry=Settings.from_env().registry,
            files=Settings.from_env().root / "files",
            memory_budget_mb=float(env.get("FACTORY_SERVE_MEMORY_MB", cls.memory_budget_mb)),
            idle_ttl_s=float(env.get("FACTORY_SERVE_IDLE_TTL_S", cls.idle_ttl_s)),
            queue_size=int(env.get("FACTORY_SERVE_QUEUE_SIZE", cls.queue_size)),
            max_batch=int(env.get("FACTORY_SERVE_MAX_BATCH", cls.max_batch)),
            max_body_bytes=int(env.get("FACTORY_SERVE_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_upload_bytes=int(env.get("FACTORY_SERVE_MAX_UPLOAD_BYTES", cls.max_upload_bytes)),
            poll_interval_s=float(env.get("FACTORY_SERVE_POLL_S", cls.poll_interval_s)),
            default_model=env.get("FACTORY_SERVE_DEFAULT_MODEL") or None,
            cors_origins=tuple(o.strip() for o in env.get("FACTORY_SERVE_CORS_ORIGINS", "").split(",") if o.strip()),
        )
