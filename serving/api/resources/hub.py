"""The model hub as the web UI's "add a model" page browses it: GET /v1/hub/models?search= (huggingface_hub's
`list_models`) and GET /v1/hub/files/{repo_id} (its file tree with sizes). The hub is the one `HF_ENDPOINT`
names, read at each call (a mirror, or the tests' local hub), as the build flow's downloads use it."""
from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from serving.api.errors import APIError
from serving.api.schemas import parse_query
from serving.api.schemas.ui import HubSearchQuery

MAX_FILES = 10_000


REACH_TIMEOUT_S = 3.0


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _api() -> HfApi:
    return HfApi(endpoint=_endpoint())


def _check_reachable() -> None:
    """One plain request first: huggingface_hub retries a refused or unresolvable hub five times with backoff
    (~25 s), while a page waiting on a search wants to hear at once that there is no hub (offline, a firewall)."""
    try:
        httpx.get(_endpoint(), timeout=REACH_TIMEOUT_S, follow_redirects=False)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ConnectionError(str(exc)) from None


class HubModels:
    async def on_get(self, req, resp):
        query = parse_query(req, HubSearchQuery)
        models = await _call(lambda: list(_api().list_models(search=query.search or None, limit=query.limit)))
        resp.media = {"object": "list", "data": [_model(model) for model in models]}

    async def on_get_files(self, req, resp, repo_id: str):
        def tree() -> list[Any]:
            entries = _api().list_repo_tree(repo_id, recursive=True)
            return [entry for _, entry in zip(range(MAX_FILES), entries)]

        entries = await _call(tree, repo_id)
        resp.media = {"object": "list", "repo": repo_id, "data": [
            {"path": entry.path, "size": getattr(entry, "size", None)} for entry in entries
            if type(entry).__name__ == "RepoFile"]}


async def _call(work, repo_id: str | None = None):
    def checked():
        _check_reachable()
        return work()

    try:
        return await asyncio.to_thread(checked)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise APIError(404, f"no repository {repo_id!r} on the hub", param="repo_id", code="repo_not_found") from None
    except Exception as exc:  # unreachable, refused, a hub error: the hub is not ours to fix
        raise APIError(503, f"the model hub cannot be reached ({type(exc).__name__})", type_="server_error",
                       code="hub_unreachable") from None


def _model(model) -> dict[str, Any]:
    modified = getattr(model, "last_modified", None)
    return {"id": model.id, "downloads": getattr(model, "downloads", None), "likes": getattr(model, "likes", None),
            "tags": list(getattr(model, "tags", None) or []),
            "last_modified": modified.isoformat() if hasattr(modified, "isoformat") else modified}
