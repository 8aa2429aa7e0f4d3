"""The OpenAPI 3.1 document (`/openapi.json`), generated: pydantic writes every schema from the models in
serving/api/schemas/ (request bodies, query strings, responses); this module holds only the table of operations
(per method and path: request and response models, a summary, a tag) and walks the app's own routes through it.
A route the table does not describe is left out of the document and reported by `undescribed`, which the tests
require to be empty.

Statuses that follow from what a route is are added here, once, rather than repeated in the table: a body may be
malformed (400), slow to arrive (408) or too large (413); a query string may be malformed (400); a route that
needs an API key (serving/api/auth.py decides which) may be refused (401, 403), rate limited (429), or find the
rate-limit store unreachable (503). Every error status has OpenAI's error body (Anthropic's on its Messages API).
"""
from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import falcon.inspect
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import models_json_schema

from serving.api.auth import scope_needed
from serving.api.schemas.anthropic import CountTokens, CreateMessage
from serving.api.schemas.anthropic_bodies import (AnthropicError, AnthropicMessage, MessageStreamEvent,
                                                  MessageTokensCount)
from serving.api.schemas.embeddings import EmbeddingList, EmbeddingRequest, RerankList, RerankRequest
from serving.api.schemas.fine_tuning import FineTuningJobRequest, JobEventsQuery, JobListQuery
from serving.api.schemas.openai import ChatCompletionRequest, CompletionRequest
from serving.api.schemas.responses_api import CreateResponse
from serving.api.schemas.responses_api_bodies import ResponseDeleted, ResponseObject, ResponseStreamEvent
from serving.api.schemas.responses import (ChatCompletion, ChatCompletionEvent, Completion, CompletionEvent,
                                           ErrorBody, File, FileDeleted, FileList, FileUpload, FineTuningJob,
                                           FineTuningJobEventList, FineTuningJobList, Health, Model, ModelList,
                                           NotReady, ProviderList, Ready)
from serving.api.schemas.ui import (BuildList, BuildObject, BuildRequest, EventTicket, GgufUpload, HubFileList,
                                    HubModelList, HubSearchQuery, ListQuery, LossCurve, PromoteRequest,
                                    RegistryModel, RegistryModelList, RegistryVersion, RollbackRequest, SpecRequest,
                                    UploadQuery, WrittenSpec)

REF = "#/components/schemas/{model}"
SECURITY = [{"bearer": []}, {"apiKey": []}]
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key from `factory keys create`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "the same key, "
               "Anthropic-style"},
}
STATUS = {
    200: "OK",
    400: "Invalid request: `param` names the field at fault",
    401: "No API key, or an unknown or revoked one (once keys exist)",
    403: "The key lacks the scope this route needs",
    404: "No such model, file or job",
    408: "The request body did not arrive in time",
    413: "The request body is too large",
    429: "Rate limited (the key's limits) or busy (the model's queue is full); see Retry-After",
    503: "Not available now: the fine-tuning backend, the rate-limit store or the model's provider cannot be "
         "reached (see Retry-After), or nothing can be served yet",
}
PATH_PARAMETER = TypeAdapter(Annotated[str, Field(min_length=1)]).json_schema()


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    ok: type[BaseModel] | str  # the 200 body: a JSON model, or the media type of a text body
    body: type[BaseModel] | None = None  # application/json
    upload: type[BaseModel] | None = None  # multipart/form-data
    query: type[BaseModel] | None = None
    events: type[BaseModel] | None = None  # with `"stream": true`: server-sent events, each one of these
    errors: tuple[int, ...] = ()  # statuses beyond those added for every route like it, with OpenAI's error body
    other: dict[int, type[BaseModel]] = field(default_factory=dict)  # statuses with a body of their own
    error_body: type[BaseModel] = ErrorBody  # every other error status's body
    description: str | None = None


CHAT = Operation("Create a chat completion", "chat", ok=ChatCompletion, body=ChatCompletionRequest,
                 events=ChatCompletionEvent, errors=(404, 429),
                 description="The model's chat template renders `messages`. With `\"stream\": true` the answer "
                             "comes as server-sent events: chunks, then `data: [DONE]`.")
FINE_TUNE = Operation("Create a fine-tuning job", "fine-tuning", ok=FineTuningJob, body=FineTuningJobRequest,
                      errors=(404, 503), description="Starts a run of the fine-tune deployment on Prefect; 503 when "
                                                     "Prefect or the deployment cannot be reached.")
LIST_JOBS = Operation("List fine-tuning jobs", "fine-tuning", ok=FineTuningJobList, query=JobListQuery, errors=(503,))
FIRST_PLAN = "The path the product's first plan named; the same as {}."

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/v1/models"): Operation("List models", "models", ok=ModelList),
    ("GET", "/v1/models/{model_id}"): Operation("Retrieve a model", "models", ok=Model, errors=(404,)),
    ("GET", "/v1/models/{model_id}/{model}"): Operation("Retrieve a provider's model", "models", ok=Model,
                                                        errors=(404,), description="`provider/model`: a model of "
                                                        "an upstream provider, `model_id` being the provider's name "
                                                        "(`model` may hold slashes too)."),
    ("GET", "/v1/providers"): Operation("List upstream providers and their health", "models", ok=ProviderList,
                                        description="The OpenAI-compatible upstreams of the server config, as "
                                                    "this worker last checked them; their models are listed by "
                                                    "/v1/models as `provider/model`."),
    ("POST", "/v1/chat/completions"): CHAT,
    ("POST", "/chat"): replace(CHAT, description=FIRST_PLAN.format("POST /v1/chat/completions")),
    ("POST", "/v1/completions"): Operation("Create a text completion", "completions", ok=Completion,
                                           body=CompletionRequest, events=CompletionEvent, errors=(404, 429),
                                           description="A raw prompt, no chat template."),
    ("POST", "/v1/responses"): Operation(
        "Create a response (OpenAI's Responses API)", "responses", ok=ResponseObject, body=CreateResponse,
        events=ResponseStreamEvent, errors=(404, 429),
        description="`input` (text or message, function_call and function_call_output items) after "
                    "`instructions`, through the model's chat template; function tools and `text.format`. Stored "
                    "unless `store: false`, for GET, DELETE and `previous_response_id` (404 when that is unknown). "
                    "With `\"stream\": true`: typed events, each with its `event:` name and `sequence_number`."),
    ("GET", "/v1/responses/{response_id}"): Operation("Retrieve a stored response", "responses", ok=ResponseObject,
                                                      errors=(404,), description="Another key's response is 404."),
    ("DELETE", "/v1/responses/{response_id}"): Operation("Delete a stored response", "responses",
                                                         ok=ResponseDeleted, errors=(404,)),
    ("POST", "/v1/messages"): Operation(
        "Create a message (Anthropic's Messages API)", "messages", ok=AnthropicMessage, body=CreateMessage,
        events=MessageStreamEvent, errors=(404, 429), error_body=AnthropicError,
        description="`system` and `messages` (text, tool_use and tool_result blocks) through the model's chat "
                    "template; custom tools and `tool_choice`. With `\"stream\": true`: Anthropic's named events. "
                    "The key may come as `x-api-key`; any `anthropic-version` is accepted."),
    ("POST", "/v1/messages/count_tokens"): Operation(
        "Count a message's input tokens (Anthropic's Messages API)", "messages", ok=MessageTokensCount,
        body=CountTokens, errors=(404,), error_body=AnthropicError,
        description="By the model's own chat template and tokenizer, tools included; a provider's model "
                    "cannot count (400)."),
    ("POST", "/v1/embeddings"): Operation("Create embeddings", "embeddings", ok=EmbeddingList, body=EmbeddingRequest,
                                          errors=(404, 429),
                                          description="One vector per input, from a `task: embedding` model (a chat "
                                                      "model refuses with 400 `model_not_supported`). Concurrent "
                                                      "requests are embedded in shared batches."),
    ("POST", "/v1/rerank"): Operation("Rerank documents by a query", "embeddings", ok=RerankList, body=RerankRequest,
                                      errors=(404, 429),
                                      description="llama-server's and Jina's shape. `relevance_score` is the cosine "
                                                  "similarity of the embedding model's vectors of the query and the "
                                                  "document (no cross-encoder), best first."),
    ("GET", "/health"): Operation("Whether the process answers", "health", ok=Health),
    ("GET", "/ready"): Operation("Whether the registry reads and the default model loads", "health", ok=Ready,
                                 other={503: NotReady}),
    ("GET", "/metrics"): Operation("Prometheus metrics", "health", ok="text/plain"),
    ("POST", "/v1/files"): Operation("Upload a training file", "files", ok=File, upload=FileUpload),
    ("GET", "/v1/files"): Operation("List files", "files", ok=FileList),
    ("GET", "/v1/files/{file_id}"): Operation("Retrieve a file", "files", ok=File, errors=(404,)),
    ("DELETE", "/v1/files/{file_id}"): Operation("Delete a file", "files", ok=FileDeleted, errors=(404,)),
    ("POST", "/v1/fine_tuning/jobs"): FINE_TUNE,
    ("GET", "/v1/fine_tuning/jobs"): LIST_JOBS,
    ("POST", "/fine-tune"): replace(FINE_TUNE, description=FIRST_PLAN.format("POST /v1/fine_tuning/jobs")),
    ("GET", "/fine-tune"): replace(LIST_JOBS, description=FIRST_PLAN.format("GET /v1/fine_tuning/jobs")),
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): Operation("Retrieve a fine-tuning job", "fine-tuning",
                                                        ok=FineTuningJob, errors=(404, 503)),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): Operation("List a fine-tuning job's events", "fine-tuning",
                                                               ok=FineTuningJobEventList, query=JobEventsQuery,
                                                               errors=(404, 503)),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): Operation("Cancel a fine-tuning job", "fine-tuning",
                                                                ok=FineTuningJob, errors=(400, 404, 503),
                                                                description="400 when the job has already ended."),
    # the web UI's API (docs/ui-api.md)
    ("POST", "/v1/events/tickets"): Operation("Get a single-use ticket for the events WebSocket", "events",
                                              ok=EventTicket, description="Open ws(s)://HOST/v1/events?ticket=... "
                                              "within `expires_in` seconds; a ticket works once, on any worker."),
    ("GET", "/v1/registry/models"): Operation("List the registry's models with every version", "registry",
                                              ok=RegistryModelList),
    ("GET", "/v1/registry/models/{name}"): Operation("Retrieve a registry model with every version", "registry",
                                                     ok=RegistryModel, errors=(404,),
                                                     description="Versions with aliases, formats and "
                                                     "quantization, the validation report and lineage."),
    ("POST", "/v1/admin/registry/models/{name}/promote"): Operation(
        "Point an alias at a version", "registry", ok=RegistryVersion, body=PromoteRequest, errors=(404,),
        description="What `factory registry promote` does; every worker hot-reloads it."),
    ("POST", "/v1/admin/registry/models/{name}/rollback"): Operation(
        "Move an alias back to where it pointed before", "registry", ok=RegistryVersion, body=RollbackRequest,
        errors=(404,), description="What `factory registry rollback` does; 400 `nothing_to_roll_back`."),
    ("GET", "/v1/builds"): Operation("List builds", "builds", ok=BuildList, query=ListQuery, errors=(503,)),
    ("GET", "/v1/builds/{build_id}"): Operation("Retrieve a build", "builds", ok=BuildObject, errors=(404, 503)),
    ("POST", "/v1/admin/builds"): Operation("Build a spec of the specs folder", "builds", ok=BuildObject,
                                            body=BuildRequest, errors=(404, 503),
                                            description="A run of the build-model/on-demand deployment on Prefect "
                                                        "(`factory deploy` registers it)."),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/loss"): Operation("A fine-tuning job's loss curve", "fine-tuning",
                                                             ok=LossCurve, errors=(404, 503)),
    ("GET", "/v1/hub/models"): Operation("Search the model hub", "hub", ok=HubModelList, query=HubSearchQuery,
                                         description="The hub HF_ENDPOINT names (huggingface_hub)."),
    ("GET", "/v1/hub/files/{repo_id}"): Operation("List a hub repository's files", "hub", ok=HubFileList,
                                                  errors=(404,), description="`repo_id` may hold a slash."),
    ("POST", "/v1/admin/specs"): Operation("Add a spec and build it", "builds", ok=WrittenSpec, body=SpecRequest,
                                           errors=(503,), description="Validated like `factory spec check`: a 400 "
                                           "`invalid_spec` lists every `file:line: field: problem`."),
    ("POST", "/v1/admin/uploads"): Operation("Upload a GGUF model and build it", "builds", ok=WrittenSpec,
                                             upload=GgufUpload, query=UploadQuery, errors=(503,),
                                             description="Published as `factory serve FILE` would (an implicit "
                                             "spec, converted, validated). A raw application/octet-stream body "
                                             "works too."),
}
# The API's own description is not part of it.
SELF = frozenset({"/openapi.json", "/docs", "/docs/openapi-3.0.json",
                  "/"})  # and the web UI's page (its files, under /ui, are a static route)
# OpenAPI 3.1 has no words for a WebSocket: its routes are listed under `x-websockets`, described in docs/ui-api.md.
WEBSOCKETS = {"/v1/events": "Live events (JSON messages {type, time, ...}); ?ticket= from POST /v1/events/tickets "
                            "once keys exist; refused with close code 4401 or 4403. See docs/ui-api.md."}


def routes(app) -> list[tuple[str, str]]:
    """(method, path template) of every responder the app has, Falcon's own (OPTIONS, 405) aside; a field's
    converter (`{model:path}`) is Falcon's business, not the document's."""
    return [(method.method, re.sub(r"{(\w+):[^}]*}", r"{\1}", route.path))
            for route in falcon.inspect.inspect_routes(app) for method in route.methods if not method.internal]


def undescribed(app) -> list[tuple[str, str]]:
    return [route for route in routes(app) if route not in OPERATIONS and route[1] not in SELF
            and not (route[0] == "WEBSOCKET" and route[1] in WEBSOCKETS)]


def build_document(app) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes."""
    described = [(method, path) for method, path in routes(app) if (method, path) in OPERATIONS]
    operations = [OPERATIONS[route] for route in described]
    models = {model for op in operations for model in (op.ok, op.body, op.upload, op.events, op.error_body,
                                                       *op.other.values()) if isinstance(model, type)}
    refs, schemas = models_json_schema([(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
                                       ref_template=REF)
    ref = {model: refs[(model, "validation")] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in zip(described, operations):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, op, ref)
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-factory", "version": importlib.metadata.version("llm-factory"),
                 "description": "OpenAI-compatible serving of the models in an llm-factory registry, and "
                                "fine-tuning through the same API."},
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {}), "securitySchemes": SECURITY_SCHEMES},
        "x-websockets": {path: {"description": text} for method, path in routes(app)
                         if method == "WEBSOCKET" and (text := WEBSOCKETS.get(path))},
    }


def _operation(method: str, path: str, op: Operation, ref: dict[type, dict]) -> dict[str, Any]:
    scope = scope_needed(path)
    errors = set(op.errors)
    if op.body or op.upload:
        errors |= {400, 408, 413}
    if op.query:
        errors.add(400)
    if scope:
        errors |= {401, 403, 429, 503}
    ok: dict[str, Any] = ({"text/plain": {"schema": {"type": "string"}}} if isinstance(op.ok, str)
                          else {"application/json": {"schema": ref[op.ok]}})
    if op.events:
        ok["text/event-stream"] = {"schema": ref[op.events]}
    responses = {"200": {"description": STATUS[200], "content": ok}}
    for status in sorted(errors | set(op.other)):
        body = ref[op.other.get(status, op.error_body)]
        responses[str(status)] = {"description": STATUS[status], "content": {"application/json": {"schema": body}}}
    operation: dict[str, Any] = {
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{method.lower()}{path}").strip("_"),
        "summary": op.summary, "tags": [op.tag],
        "security": SECURITY if scope else [],
        "parameters": [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMETER}
                       for name in re.findall(r"{(\w+)}", path)] + _query_parameters(op.query),
        "responses": responses,
    }
    description = [op.description] if op.description else []
    if scope:
        description.append("Once API keys exist, needs " + ("an `admin` key." if scope == "admin" else
                                                             f"one with the `{scope}` scope (or `admin`)."))
    if description:
        operation["description"] = " ".join(description)
    if op.body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref[op.body]}}}
    if op.upload:
        operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": ref[op.upload]}}}
    if not operation["parameters"]:
        del operation["parameters"]
    return operation


def _query_parameters(model: type[BaseModel] | None) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = model.model_json_schema(ref_template=REF)
    return [{"name": name, "in": "query", "required": name in schema.get("required", []), "schema": property_schema}
            for name, property_schema in schema["properties"].items()]


def as_openapi_30(document: dict[str, Any]) -> dict[str, Any]:
    """The same document in OpenAPI 3.0's words, for the docs page only: the Swagger UI that swagger-ui-bundle ships
    (4.15) renders 3.0 documents and refuses 3.1 ones. Only what pydantic writes needs saying differently: nullable
    unions, `const`, numeric exclusive bounds, key patterns, examples, and JSON carried in strings."""
    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: convert(value) for key, value in node.items()}
        if isinstance(node.get("anyOf"), list) and {"type": "null"} in node["anyOf"]:
            rest = [member for member in node.pop("anyOf") if member != {"type": "null"}]
            node["nullable"] = True
            if len(rest) == 1 and "$ref" not in rest[0]:
                node = {**rest[0], **node}
            else:
                node["anyOf"] = rest
        if "const" in node:
            node["enum"] = [node.pop("const")]
        for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(node.get(exclusive), (int, float)) and not isinstance(node[exclusive], bool):
                node[inclusive], node[exclusive] = node[exclusive], True
        if isinstance(node.get("patternProperties"), dict) and len(node["patternProperties"]) == 1:
            (pattern, value), = node.pop("patternProperties").items()  # 3.0 cannot constrain keys: say it in words
            node["additionalProperties"] = {**value, "description": f"keys match {pattern}"}
        if isinstance(node.get("examples"), list) and node["examples"]:  # a schema's: 3.0 has one `example`
            node["example"] = node.pop("examples")[0]
        for keyword in ("contentMediaType", "contentSchema", "propertyNames"):
            node.pop(keyword, None)
        return node

    return {**convert(document), "openapi": "3.0.3"}
