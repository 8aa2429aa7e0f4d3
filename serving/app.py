"""The Falcon ASGI application, assembled explicitly: media handlers, middleware, routes, error shape."""
from __future__ import annotations

import falcon
import falcon.asgi
import orjson

from factory.files import FileStore
from factory.registry import Registry
from serving.config import ServerConfig
from serving.errors import handle_unexpected, serialize_error
from serving.middleware import BodyLimit, Lifecycle, RequestContext
from serving.pool import ModelPool
from serving.resources.chat import ChatCompletions
from serving.resources.completions import Completions
from serving.resources.files import Files
from serving.resources.fine_tuning import FineTuningJobs
from serving.resources.health import Health, Ready
from serving.resources.metrics import Metrics
from serving.resources.models import Models
from serving.watcher import RegistryWatcher


def create_app(config: ServerConfig | None = None) -> falcon.asgi.App:
    config = config or ServerConfig.from_env()
    pool = ModelPool(Registry(config.registry), config)
    watcher = RegistryWatcher(pool, config.poll_interval_s)
    app = falcon.asgi.App(
        middleware=[RequestContext(), BodyLimit(config.max_body_bytes, config.max_upload_bytes), Lifecycle(pool, watcher)],
        cors_enable=True,
    )
    json = falcon.media.JSONHandler(dumps=lambda o: orjson.dumps(o).decode(), loads=orjson.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json

    models = Models(pool)
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id}", models, suffix="one")
    chat = ChatCompletions(pool)
    app.add_route("/v1/chat/completions", chat)
    app.add_route("/chat", chat)  # the path the product's first plan named
    app.add_route("/v1/completions", Completions(pool))
    app.add_route("/health", Health())
    app.add_route("/ready", Ready(pool))
    app.add_route("/metrics", Metrics(pool))

    files = FileStore(config.files)
    file_routes = Files(files)
    app.add_route("/v1/files", file_routes)
    app.add_route("/v1/files/{file_id}", file_routes, suffix="one")
    jobs = FineTuningJobs(pool, files)
    app.add_route("/v1/fine_tuning/jobs", jobs)
    app.add_route("/fine-tune", jobs)  # the path the product's first plan named
    app.add_route("/v1/fine_tuning/jobs/{job_id}", jobs, suffix="one")
    app.add_route("/v1/fine_tuning/jobs/{job_id}/events", jobs, suffix="events")
    app.add_route("/v1/fine_tuning/jobs/{job_id}/cancel", jobs, suffix="cancel")

    app.add_error_handler(Exception, handle_unexpected)
    app.set_error_serializer(serialize_error)
    return app
