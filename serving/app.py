"""The Falcon ASGI application, assembled explicitly from its parts: the model catalog (local models from the
registry unless a test hands in its own, beside the config's upstream providers), the response cache when the config
enables it, the fine-tune job backend (Prefect unless handed in), media handlers, middleware, routes, and the error
shape. Wiring only."""
from __future__ import annotations

import falcon
import falcon.asgi
import orjson

from factory.files import FileStore
from factory.keys import KeyStore
from factory.registry import Registry
from factory.server_config import ServerConfig, load_server_config
from serving.api import errors
from serving.api.auth import Auth
from serving.api.limit_stores import open_store
from serving.api.metrics import RequestMetrics
from serving.api.middleware import BodyLimit, Lifecycle, RequestContext
from serving.api.ratelimit import RateLimits
from serving.api.render.openai import ChatRenderer, CompletionRenderer
from serving.api.resources.anthropic import Messages, MessageTokens
from serving.api.resources.files import Files
from serving.api.resources.fine_tuning import FineTuningJobs
from serving.api.resources.embeddings import EmbeddingsEndpoint, RerankEndpoint
from serving.api.resources.generation import GenerationEndpoint
from serving.api.resources.health import Health, Ready
from serving.api.resources.metrics import Metrics
from serving.api.resources.models import Models
from serving.api.resources.providers import Providers
from serving.api.resources.responses_api import Responses
from serving.api.live import GenerationEvents
from serving.api.resources.add_model import Specs, Uploads
from serving.api.resources.builds import Builds, LossCurve
from serving.api.resources.events import EventsSocket, EventTickets
from serving.api.resources.hub import HubModels
from serving.api.resources.registry import RegistryModels
from serving.api.resources.openapi import SWAGGER_UI, DocsPage, OpenAPIDocument
from serving.api.resources.web_ui import WEB, WebPage
from serving.api.schemas.openai import ChatCompletionRequest, CompletionRequest
from serving.api.stored_responses import ResponseStore
from serving.api.transport import GuardedTransport
from serving.inference.cache import ResponseCache
from serving.inference.catalog import Catalog
from serving.inference.handle import ModelCatalog
from serving.inference.providers import ProviderSet
from serving.events.feed import LiveFeed
from serving.jobs import FineTuneJobs
from serving.jobs.builds import PrefectBuilds


# What a web page may read of a response: its request id, why to wait, whether it came from the cache, and how much
# of its key's limits are left.
EXPOSED_HEADERS = ["X-Request-Id", "Retry-After", "x-cache"] + [
    f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")]


def create_app(config: ServerConfig | None = None, *, models: ModelCatalog | None = None,
               jobs: FineTuneJobs | None = None):
    """The ASGI application: Falcon's app, with request bodies counted as they arrive."""
    config = config or load_server_config().config
    if models is None:
        from serving.inference.pool import ModelPool

        models = ModelPool(Registry(config.registry_root), config.models)
    pool = models  # the local models, whose loads and unloads the live feed tells
    if not isinstance(models, Catalog):  # a test may hand in a Catalog of its own (providers over in-process apps)
        models = Catalog(models, ProviderSet(config.providers))
    cache = ResponseCache(config.cache) if config.cache.enabled else None
    if jobs is None:
        from serving.jobs.prefect import PrefectJobs

        jobs = PrefectJobs(Registry(config.registry_root))
    body_limit = BodyLimit(config.requests.max_body_bytes, config.requests.max_upload_bytes)
    keys = Auth(KeyStore(config.root), config.auth.keys)  # keys -> principal, then its per-key limits
    router = falcon.routing.CompiledRouter()  # RequestMetrics names the route of a request refused before routing
    registry, builds = Registry(config.registry_root), PrefectBuilds()
    feed = LiveFeed(config.root, registry, models, pool, jobs, builds, config.models.poll_s)  # WebSocket /v1/events
    middleware = [RequestContext(), RequestMetrics(router), keys, RateLimits(open_store(config.root, config.limits)),
                  body_limit, Lifecycle(models), feed, GenerationEvents(feed.hub)]
    if config.cors.origins:
        middleware.insert(0, falcon.CORSMiddleware(allow_origins=list(config.cors.origins),
                                                   expose_headers=EXPOSED_HEADERS))
    app = falcon.asgi.App(middleware=middleware, router=router)
    json = falcon.media.JSONHandler(dumps=lambda o: orjson.dumps(o).decode(), loads=orjson.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json

    listing = Models(models)
    app.add_route("/v1/models", listing)
    app.add_route("/v1/models/{model_id}", listing, suffix="one")
    # a provider's model: Falcon wants the same field name at the same level, so the provider's name is `model_id` here
    app.add_route("/v1/models/{model_id}/{model:path}", listing, suffix="provided")
    app.add_route("/v1/providers", Providers(models))
    chat = GenerationEndpoint(models, ChatCompletionRequest, ChatRenderer, cache)
    app.add_route("/v1/chat/completions", chat)
    app.add_route("/chat", chat)  # the path the product's first plan named
    app.add_route("/v1/completions", GenerationEndpoint(models, CompletionRequest, CompletionRenderer, cache))
    responses = Responses(models, ResponseStore(config.root, config.responses.max_age_days,
                                                config.responses.max_stored), cache)
    app.add_route("/v1/responses", responses)
    app.add_route("/v1/responses/{response_id}", responses, suffix="one")
    app.add_route("/v1/messages", Messages(models, cache))  # Anthropic's Messages API (errors in its shape)
    app.add_route("/v1/messages/count_tokens", MessageTokens(models))
    app.add_route("/v1/embeddings", EmbeddingsEndpoint(models))
    app.add_route("/v1/rerank", RerankEndpoint(models))
    app.add_route("/health", Health())
    app.add_route("/ready", Ready(models))
    app.add_route("/metrics", Metrics())

    files = FileStore(config.files)
    file_routes = Files(files)
    app.add_route("/v1/files", file_routes)
    app.add_route("/v1/files/{file_id}", file_routes, suffix="one")
    tuning = FineTuningJobs(models, files, jobs)
    app.add_route("/v1/fine_tuning/jobs", tuning)
    app.add_route("/fine-tune", tuning)  # the path the product's first plan named
    app.add_route("/v1/fine_tuning/jobs/{job_id}", tuning, suffix="one")
    app.add_route("/v1/fine_tuning/jobs/{job_id}/events", tuning, suffix="events")
    app.add_route("/v1/fine_tuning/jobs/{job_id}/cancel", tuning, suffix="cancel")

    # the web UI's API (docs/ui-api.md): live events, the registry catalog, builds, adding models
    app.add_route("/v1/events", EventsSocket(feed.hub, keys.keys, config.auth.keys))
    app.add_route("/v1/events/tickets", EventTickets(feed.hub))
    catalog = RegistryModels(registry)
    app.add_route("/v1/registry/models", catalog)
    app.add_route("/v1/registry/models/{name}", catalog, suffix="one")
    app.add_route("/v1/admin/registry/models/{name}/promote", catalog, suffix="promote")
    app.add_route("/v1/admin/registry/models/{name}/rollback", catalog, suffix="rollback")
    build_routes = Builds(builds, config.specs_dir)
    app.add_route("/v1/builds", build_routes)
    app.add_route("/v1/builds/{build_id}", build_routes, suffix="one")
    app.add_route("/v1/admin/builds", build_routes, suffix="start")
    app.add_route("/v1/fine_tuning/jobs/{job_id}/loss", LossCurve(jobs))
    hub = HubModels()
    app.add_route("/v1/hub/models", hub)
    app.add_route("/v1/hub/files/{repo_id:path}", hub, suffix="files")
    app.add_route("/v1/admin/specs", Specs(builds, config.specs_dir))
    app.add_route("/v1/admin/uploads", Uploads(builds, config.specs_dir, config.root / "uploads"))

    document = OpenAPIDocument(app)  # generated from the routes above, on first request
    app.add_route("/openapi.json", document)
    app.add_route("/docs/openapi-3.0.json", document, suffix="swagger")
    app.add_route("/docs", DocsPage())
    app.add_static_route("/docs/static", SWAGGER_UI)
    app.add_route("/", WebPage())  # the web UI
    app.add_static_route("/ui", WEB)

    errors.install(app)
    return GuardedTransport(app, body_limit, config.requests.read_timeout_s, config.requests.send_timeout_s)
