"""The OpenAPI document in-process: a valid OpenAPI 3.1 document that describes every route, and whose response
schemas hold what the renderers actually write (whole responses, stream events, files, jobs, errors), so the
document and the code cannot drift apart. The same document against a live server, fuzzed: tests/serving/
test_openapi.py."""
from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_30, OPENAPI_31

from serving.api import openapi
from serving.api.schemas import responses
from serving.app import create_app
from serving.jobs import Job, JobConflict, JobEvent, JobNotFound, JobsUnavailable
from tests.fixtures.memorise import training_jsonl
from tests.fixtures.scripted_engine import scripted_pool

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
JOB = Job(id="ftjob-1", status="failed", base="tiny@1", created_at=1, finished_at=2, fine_tuned_model=None,
          training_file="file-x", validation_file=None, hyperparameters={"iters": 2}, seed=0, error="gate failed")


class ScriptedJobs:
    """The fine-tune job backend's contract, answered from memory ("ftjob-down" plays an unreachable Prefect)."""

    async def create(self, parameters):
        return JOB

    async def list(self, limit):
        return [JOB], False

    async def get(self, job_id):
        if job_id == "ftjob-down":
            raise JobsUnavailable("the Prefect API cannot be reached", code="prefect_unreachable")
        if job_id != JOB.id:
            raise JobNotFound(job_id)
        return JOB

    async def events(self, job_id, limit):
        await self.get(job_id)
        return [JobEvent(id="ftevent-1", created_at=1, level="info", message="step 1/2: train loss 1.5",
                         data={"step": 1, "total_steps": 2, "train_loss": 1.5}),
                JobEvent(id="ftevent-2", created_at=2, level="error", message="failed")]

    async def cancel(self, job_id):
        raise JobConflict(f"job {job_id} has already ended (failed)")


@pytest.fixture
async def app_and_client(tmp_path):
    pool, _, config = scripted_pool(tmp_path)
    app = create_app(config, models=pool, jobs=ScriptedJobs())
    await pool.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as client:
        yield app, client
    await pool.stop()


@pytest.fixture
async def client(app_and_client):
    return app_and_client[1]


@pytest.fixture
async def document(client):
    response = await client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    return response.json()


async def test_the_document_is_openapi_31_and_describes_every_route(app_and_client, document):
    jsonschema.Draft202012Validator(OPENAPI_31).validate(document)
    for name, schema in document["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    falcon_app = app_and_client[0].app
    assert openapi.undescribed(falcon_app) == []
    assert {(method.upper(), path) for path, item in document["paths"].items() for method in item} \
        == set(openapi.OPERATIONS)


async def test_routes_that_need_a_key_say_so_and_the_probes_do_not(document):
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == openapi.SECURITY and {"401", "403", "429"} <= set(chat["responses"])
    for path in ("/health", "/ready"):
        assert document["paths"][path]["get"]["security"] == []
        assert "401" not in document["paths"][path]["get"]["responses"]
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}


async def test_request_bounds_are_stated(document):
    chat = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["n"]["maximum"] == 8 and chat["messages"]["maxItems"] == 2048
    assert chat["top_logprobs"]["anyOf"][0]["maximum"] == 20
    assert chat["logit_bias"]["anyOf"][0]["maxProperties"] == 300
    assert chat["stop"]["anyOf"][1]["maxItems"] == 32  # OpenAI's 4 would refuse Continue's autocomplete
    assert chat["tools"]["anyOf"][0]["maxItems"] == 128  # OpenAI's limit


# ------------------------------------------------------------------ renderer output against the document


def schema_for(document: dict, method: str, path: str, status: int, media_type: str = "application/json") -> dict:
    content = document["paths"][path][method.lower()]["responses"][str(status)]["content"]
    return {**content[media_type]["schema"], "components": document["components"]}


def conforms(document: dict, method: str, path: str, response: httpx.Response) -> None:
    """The response's status and content type are documented for its operation, and its body holds to them."""
    media_type = response.headers["content-type"].split(";")[0]
    schema = schema_for(document, method, path, response.status_code, media_type)
    if media_type == "text/event-stream":
        event_model = getattr(responses, schema["$ref"].rsplit("/", 1)[-1])
        frames = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
        assert frames[-1] == "[DONE]"
        for frame in frames:  # the event model parses `data` as JSON and holds it to the chunk model, exactly
            event_model.model_validate({"data": frame})
    elif media_type == "application/json":
        jsonschema.Draft202012Validator(schema).validate(response.json())


async def test_chat_and_completions_whole_and_streamed(client, document):
    for path in ("/v1/chat/completions", "/chat"):
        for extra in ({}, {"n": 2, "logprobs": True, "top_logprobs": 2},
                      {"stream": True}, {"stream": True, "logprobs": True, "stream_options": {"include_usage": True}}):
            response = await client.post(path, json={"model": "tiny", "messages": HI, "max_tokens": 4, **extra})
            assert response.status_code == 200, response.text
            conforms(document, "POST", path, response)
    for extra in ({}, {"logprobs": 2, "n": 2}, {"stream": True, "logprobs": 1},
                  {"stream": True, "stream_options": {"include_usage": True}}):
        response = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 4,
                                                               **extra})
        assert response.status_code == 200, response.text
        conforms(document, "POST", "/v1/completions", response)


async def test_refusals(client, document):
    cases = [
        ("POST", "/v1/chat/completions", {"json": {"model": "tiny", "messages": []}}, 400),
        ("POST", "/v1/chat/completions", {"json": {"model": "nope", "messages": HI}}, 404),
        ("POST", "/v1/completions", {"content": b"x" * (9 << 20)}, 413),
        ("GET", "/v1/models/{model_id}", {"url": "/v1/models/nope"}, 404),
        ("GET", "/v1/files/{file_id}", {"url": "/v1/files/" + "x" * 300}, 404),
        ("DELETE", "/v1/files/{file_id}", {"url": "/v1/files/file-nope"}, 404),
        ("POST", "/v1/files", {"files": {"file": ("t.jsonl", b"{}\n")}, "data": {"purpose": "fine-tune"}}, 400),
        ("GET", "/v1/fine_tuning/jobs", {"url": "/v1/fine_tuning/jobs?limit=0"}, 400),
        ("GET", "/v1/fine_tuning/jobs/{job_id}", {"url": "/v1/fine_tuning/jobs/ftjob-nope"}, 404),
        ("GET", "/v1/fine_tuning/jobs/{job_id}", {"url": "/v1/fine_tuning/jobs/ftjob-down"}, 503),
        ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", {"url": "/v1/fine_tuning/jobs/ftjob-1/cancel"}, 400),
        ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "tiny", "training_file": "file-x" * 100}}, 400),
    ]
    for method, path, request, status in cases:
        url = request.pop("url", path)
        response = await client.request(method, url, **request)
        assert response.status_code == status, (method, url, response.text)
        conforms(document, method, path, response)


async def test_models_files_fine_tuning_and_probes(client, document):
    async def check(method: str, path: str, url: str | None = None, **request) -> dict:
        response = await client.request(method, url or path, **request)
        assert response.status_code == 200, (path, response.text)
        conforms(document, method, path, response)
        return response.json() if response.headers["content-type"].startswith("application/json") else {}

    await check("POST", "/v1/chat/completions", json={"model": "tiny", "messages": HI, "max_tokens": 1})  # loaded
    await check("GET", "/v1/models")
    await check("GET", "/v1/models/{model_id}", "/v1/models/default")
    await check("GET", "/health")
    await check("GET", "/ready")
    await check("GET", "/metrics")
    stored = await check("POST", "/v1/files", files={"file": ("train.jsonl", training_jsonl().encode())},
                         data={"purpose": "fine-tune"})
    await check("GET", "/v1/files")
    await check("GET", "/v1/files/{file_id}", f"/v1/files/{stored['id']}")
    for path in ("/v1/fine_tuning/jobs", "/fine-tune"):
        await check("POST", path, json={"model": "tiny", "training_file": stored["id"]})
        await check("GET", path)
    await check("GET", "/v1/fine_tuning/jobs/{job_id}", "/v1/fine_tuning/jobs/ftjob-1")
    await check("GET", "/v1/fine_tuning/jobs/{job_id}/events", "/v1/fine_tuning/jobs/ftjob-1/events?limit=5")
    await check("DELETE", "/v1/files/{file_id}", f"/v1/files/{stored['id']}")


async def test_the_docs_page_is_served_from_local_files(client):
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http" not in page.text.split("<body>")[1]  # nothing fetched from elsewhere
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js"):
        assert f"docs/static/{asset}" in page.text
        response = await client.get(f"/docs/static/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000
    # Swagger UI 4 reads OpenAPI 3.0: the same document, in 3.0's words
    swagger = (await client.get("/docs/openapi-3.0.json")).json()
    assert swagger["openapi"] == "3.0.3" and set(swagger["paths"]) == set((await client.get("/openapi.json"))
                                                                          .json()["paths"])
    jsonschema.Draft4Validator(OPENAPI_30).validate(swagger)
    text = json.dumps(swagger)
    assert '"type": "null"' not in text and '"const"' not in text


async def test_fine_tuning_without_prefect_is_the_documented_503(tmp_path, document):
    """No Prefect server where PREFECT_API_URL points: a 503 naming the problem, never a 500."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    pool, _, config = scripted_pool(tmp_path)
    app = create_app(config, models=pool)  # the real job backend: Prefect's
    await pool.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
                stored = (await client.post("/v1/files", files={"file": ("t.jsonl", training_jsonl().encode())},
                                            data={"purpose": "fine-tune"})).json()
                for method, path, request in [
                        ("GET", "/v1/fine_tuning/jobs", {}),
                        ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "tiny", "training_file": stored["id"]}})]:
                    response = await client.request(method, path, **request)
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "prefect_unreachable"
                    conforms(document, method, path, response)
    finally:
        await pool.stop()
