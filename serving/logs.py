"""JSON log lines, one per event, each carrying the request id and the API key's name when there are some; to stderr
and, when configured, to a size-rotated file that every gunicorn worker shares."""
from __future__ import annotations

import contextvars
import json
import logging
import time

from concurrent_log_handler import ConcurrentRotatingFileHandler

from factory.server_config import LogsConfig

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
key_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("key_name", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(time.time(), 3), "level": record.levelname.lower(), "logger": record.name,
                "pid": record.process, "message": record.getMessage()}  # pid: which worker wrote it
        if request_id.get():
            line["request_id"] = request_id.get()
        if key_name.get():
            line["key"] = key_name.get()
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(config: LogsConfig | None = None) -> None:
    config = config or LogsConfig()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if config.file is not None:
        config.file.parent.mkdir(parents=True, exist_ok=True)
        # Several worker processes write one file: this handler takes a lock file around each write and rotation,
        # where the standard RotatingFileHandler would have each process rename the others' files away.
        handlers.append(ConcurrentRotatingFileHandler(str(config.file), maxBytes=int(config.rotate_mb * 2**20),
                                                      backupCount=config.keep, use_gzip=False))
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger("factory")
    root.handlers[:] = handlers
    root.setLevel(config.level.upper())
    root.propagate = False
