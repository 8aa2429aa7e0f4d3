"""The server config contract (`server.yaml`): how `factory serve` runs, in one file.

Same rules as specs: pydantic, unknown keys are errors, problems name `file:line: field`, a JSON Schema for editors
(`factory serve --print-schema`). Values come from four layers, each over the one before:

    defaults  <  server.yaml (`--config`, or $FACTORY_SERVE_CONFIG)  <  environment  <  command-line flags

Every field has one environment variable, named from its path: `models.memory_mb` -> FACTORY_SERVE_MODELS_MEMORY_MB,
`cors.origins` -> FACTORY_SERVE_CORS_ORIGINS (lists comma-separated); `root` and `registry` keep the factory's own
FACTORY_ROOT and FACTORY_REGISTRY. `load_server_config` returns the effective values with the origin of each, which
`factory serve --print-config` shows. gunicorn's workers load the same layers, so flags reach them as environment.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factory.settings import Settings
from factory.yaml_models import LocatedError, field_path, json_schema_of, located_message, message, read_model

CONFIG_ENV = "FACTORY_SERVE_CONFIG"
ENV_PREFIX = "FACTORY_SERVE_"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(Strict):
    memory_mb: float = Field(8192, gt=0, description="budget for loaded models; least recently used unload beyond it")
    idle_ttl_s: float = Field(900, gt=0, description="unload a model unused this long")
    queue_size: int = Field(64, ge=0, description="requests waiting per model beyond the batch; then 429")
    max_batch: int = Field(16, ge=1, le=256, description="sequences decoded together per model")
    default: str | None = Field(None, description="the model the id `default` names (over specs' aliases)")
    poll_s: float = Field(0.25, gt=0, le=60, description="how often workers look for registry changes")


class RequestsConfig(Strict):
    max_body_bytes: int = Field(8 << 20, ge=1024, description="larger request bodies get 413")
    max_upload_bytes: int = Field(512 << 20, ge=1024, description="the same for /v1/files uploads")
    read_timeout_s: float = Field(30, gt=0, description="a request body still arriving after this long gets 408 "
                                                         "(uploads: this long without a byte)")
    send_timeout_s: float = Field(60, gt=0, description="a client that reads nothing of its response for this long "
                                                         "is dropped and its generation stopped")


class AuthConfig(Strict):
    keys: Literal["required_if_any", "required"] = Field(
        "required_if_any", description="required_if_any: /v1 routes need a key once `factory keys create` made one; "
                                       "required: they always do (no key yet: nothing is allowed)")


class LimitsConfig(Strict):
    store: Literal["sqlite", "redis"] = Field("sqlite", description="where per-key rate-limit counters live, shared "
                                                                    "by every worker: sqlite under the factory root")
    url: str | None = Field(None, description="redis://host:port/db, for store: redis")

    @model_validator(mode="after")
    def redis_needs_url(self) -> "LimitsConfig":
        if self.store == "redis" and not self.url:
            raise ValueError("store: redis needs url: redis://host:port/db")
        return self


class CorsConfig(Strict):
    origins: list[str] = Field([], description="origins browsers may call from (none: no cross-origin access)")


class LogsConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: Path | None = Field(None, description="JSON lines go here as well as to stderr, rotated by size")
    rotate_mb: float = Field(50, gt=0, description="start a new file beyond this size")
    keep: int = Field(5, ge=1, le=100, description="rotated files kept")


class ProviderConfig(Strict):
    """An upstream that speaks the OpenAI API (Ollama, llama-server, vLLM, OpenAI, another factory server): its
    models are served as `NAME/MODEL`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                      description="the prefix of its model ids (`ollama` -> `ollama/llama3.2`)")
    base_urls: list[str] = Field(min_length=1, max_length=16,
                                 description="replicas of one upstream, each the base of its OpenAI API "
                                             "(http://127.0.0.1:11434/v1); requests fail over between them")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="the environment variable holding its API key (never the key "
                                                "itself); unset or empty: the provider is NOT_CONFIGURED")
    models: list[str] = Field([], description="the upstream's model ids to serve")
    discover: bool = Field(False, description="serve every model the upstream's /models lists (re-read at each "
                                              "health check), besides `models`")
    timeout_s: float = Field(60, gt=0, description="longest wait for the upstream's next byte")
    max_concurrency: int = Field(16, ge=1, le=4096, description="requests in flight to it per worker; then 429")
    check_interval_s: float = Field(10, gt=0, description="how often each replica's health is checked")
    retries: int = Field(2, ge=0, le=10, description="further attempts after a connection error or a 5xx before "
                                                      "the first byte (never once a stream has begun)")
    backoff_s: float = Field(0.2, ge=0, le=30, description="wait before a retry; doubles each time")

    @field_validator("base_urls")
    @classmethod
    def _plain_http_urls(cls, urls: list[str]) -> list[str]:
        cleaned = []
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r}: a base URL is http(s)://host[:port]/path")
            if parts.username or parts.password:  # a secret in a URL would reach logs and --print-config
                raise ValueError(f"{_masked(url)!r}: no credentials in URLs; name a variable in api_key_env")
            if parts.query or parts.fragment:
                raise ValueError(f"{url!r}: no query or fragment")
            cleaned.append(url.rstrip("/"))
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("the same base URL twice")
        return cleaned

    @model_validator(mode="after")
    def _some_models(self) -> "ProviderConfig":
        if not self.models and not self.discover:
            raise ValueError("list its models, or set discover: true")
        return self


class CacheConfig(Strict):
    """Identical deterministic requests (temperature 0, or a seed) answered from memory, per worker."""

    enabled: bool = Field(False, description="off by default: a cache changes what repeated requests cost")
    ttl_s: float = Field(600, gt=0, description="an answer is reused this long")
    max_entries: int = Field(1024, ge=1, description="least recently used answers go beyond this")
    max_mb: float = Field(64, gt=0, description="cached text and overhead per worker, estimated")


class ResponsesConfig(Strict):
    """Responses API responses stored for GET and previous_response_id (ROOT/responses.db, pruned on each write)."""

    max_age_days: float = Field(30, gt=0, description="a stored response is kept this long (OpenAI's default)")
    max_stored: int = Field(10000, ge=1, description="the oldest go beyond this many")


class ServerConfig(Strict):
    """How the OpenAI-compatible server runs."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="gunicorn workers; each loads its own copy of the models")
    root: Path = Field(Path(".factory"), description="the factory root: registry, uploaded files, keys, limits")
    registry: Path | None = Field(None, description="the registry to serve (default: ROOT/registry)")
    specs: Path | None = Field(None, description="where specs added through the API (and the web UI) are written "
                                                 "and built from (default: ROOT/specs, as `factory serve FILE`)")
    models: ModelsConfig = ModelsConfig()
    requests: RequestsConfig = RequestsConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    cors: CorsConfig = CorsConfig()
    logs: LogsConfig = LogsConfig()
    providers: list[ProviderConfig] = Field([], description="OpenAI-compatible upstreams served beside the local "
                                                             "models (FACTORY_SERVE_PROVIDERS: a JSON list)")
    cache: CacheConfig = CacheConfig()
    responses: ResponsesConfig = ResponsesConfig()

    @field_validator("providers")
    @classmethod
    def _unique_names(cls, providers: list[ProviderConfig]) -> list[ProviderConfig]:
        names = [provider.name for provider in providers]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"provider names must be unique: {', '.join(twice)}")
        return providers

    @property
    def registry_root(self) -> Path:
        return self.registry or self.root / "registry"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def specs_dir(self) -> Path:
        return self.specs or self.root / "specs"


# The factory's own variables for the two paths every command shares (factory.settings reads them too).
ENV_NAMES = {"root": "FACTORY_ROOT", "registry": "FACTORY_REGISTRY"}
CONFIG_SHAPE = "a server config is a YAML mapping (host:, port:, models:, ...)"


class ServerConfigError(LocatedError):
    """A server config that cannot be used; each line names where the bad value came from (a problem at line 0 came
    from the environment or a flag, and says which)."""

    def lines(self) -> list[str]:
        return [f"{field}: {message}" if line == 0 else located_message(self.path, line, field, message)
                for line, field, message in self.problems]


@dataclass(frozen=True)
class EffectiveConfig:
    config: ServerConfig
    origins: dict[str, str]  # "models.memory_mb" -> "default" | "server.yaml:4" | "env FACTORY_SERVE_..." | "flag"

    def rows(self) -> list[tuple[str, str, str]]:
        """(field, value, origin) for every setting, secrets masked: what `--print-config` prints."""
        values = self.config.model_dump(mode="json")
        return [(name, _shown(name, _get(values, name)), self.origins.get(name, "default")) for name in leaf_fields()]


def leaf_fields(model: type[BaseModel] = ServerConfig, prefix: str = "") -> list[str]:
    """Every setting's dotted name, in declaration order."""
    names = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names += leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def env_name(field: str) -> str:
    return ENV_NAMES.get(field) or ENV_PREFIX + field.replace(".", "_").upper()


def load_server_config(path: str | Path | None = None, environ: dict[str, str] | None = None,
                       flags: dict[str, Any] | None = None) -> EffectiveConfig:
    """The effective config: defaults, then the file (`path`, or $FACTORY_SERVE_CONFIG), the environment, `flags`
    (dotted field -> value, e.g. {"port": 9000}: the flags a person typed)."""
    env = os.environ if environ is None else environ
    path = Path(path) if path else (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    settings = Settings.from_env(env)
    data: dict[str, Any] = {"root": str(settings.root)}
    origins: dict[str, str] = {}
    lines: dict[str, int] = {}
    if path is not None:
        _, located = read_model(ServerConfig, path, ServerConfigError, CONFIG_SHAPE)  # the file alone, by line
        for name in leaf_fields():
            value = _get(located.data, name, missing := object())
            if value is not missing:
                _set(data, name, _from_file(name, value, path))
                lines[name] = located.line_of(tuple(name.split(".")))
                origins[name] = f"{path}:{lines[name]}"
    known = {env_name(name) for name in leaf_fields()} | {CONFIG_ENV}
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in known)
    if unknown:  # a misspelt or retired variable would otherwise be ignored without a word
        raise ServerConfigError(Path("."), [(0, name, "unknown setting" + _close(name, known)) for name in unknown])
    for name in leaf_fields():
        if env.get(env_name(name)):  # set and not empty
            _set(data, name, _from_env(name, env[env_name(name)]))
            origins[name] = f"env {env_name(name)}"
    for name, value in (flags or {}).items():
        _set(data, name, value)
        origins[name] = f"flag --{name.split('.')[-1].replace('_', '-')}"
    try:
        config = ServerConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = field_path(tuple(error["loc"]))
            origin = origins.get(name, "")
            told = "" if name in lines else f" (from {origin or 'the defaults'})"
            problems.append((lines.get(name, 0), name, message(error, ServerConfig) + told))
        raise ServerConfigError(path or Path("."), problems) from None
    return EffectiveConfig(config=config, origins=origins)


def server_environment(path: Path | None, flags: dict[str, Any]) -> dict[str, str]:
    """The environment that makes gunicorn's workers load what `load_server_config(path, flags=flags)` loaded."""
    env = {CONFIG_ENV: str(Path(path).absolute())} if path else {}
    for name, value in flags.items():
        env[env_name(name)] = ",".join(value) if isinstance(value, list) else str(value)
    return env


def json_schema() -> dict[str, Any]:
    return json_schema_of(ServerConfig, "llm-factory server config")


def _close(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
    return f" (did you mean {close[0]}?)" if close else " (factory serve --print-config lists the settings)"


def _from_file(name: str, value: Any, path: Path) -> Any:
    """Relative paths in the file are relative to the file's folder, as in specs."""
    if _is_path(name) and isinstance(value, str):
        return str((path.parent / value).resolve())
    return value


def _from_env(name: str, text: str) -> Any:
    if name == "providers":  # a list of mappings: JSON (or YAML flow style) in one variable
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            return f"unparseable: {str(exc).splitlines()[0]}"  # validation then names the variable
    if _annotation(name) == list[str]:
        return [item.strip() for item in text.split(",") if item.strip()]
    if _is_path(name):
        return str(Path(text).absolute())
    return text


def _annotation(name: str) -> Any:
    model: Any = ServerConfig
    *parents, leaf = name.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf].annotation


def _is_path(name: str) -> bool:
    annotation = _annotation(name)
    return annotation is Path or Path in get_args(annotation)


def _get(data: Any, name: str, default: Any = None) -> Any:
    for part in name.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def _set(data: dict, name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def _shown(name: str, value: Any) -> str:
    """A value as printed; a password in a URL (a Redis URL may carry one) is never shown. Providers name the
    variable that holds their key, never the key."""
    if isinstance(value, str):
        value = _masked(value)
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return "; ".join(_masked(json.dumps(item, separators=(",", ":"))) for item in value) or "-"
    return "-" if value is None else ", ".join(value) if isinstance(value, list) else str(value)


def _masked(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return re.sub(r"(://[^/\s:@]*:)[^/\s@]+@", r"\1***@", text)
