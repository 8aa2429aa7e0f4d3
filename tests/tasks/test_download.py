"""The download step: hub snapshots verified against the hub's listing, local sources hashed."""
from __future__ import annotations

import httpx
import pytest
from huggingface_hub.errors import HfHubHTTPError
from prefect.states import Failed

from factory.spec import Source
from tasks.download import SourceVerificationError, is_transient, snapshot_local, source_revision
from tests.fixtures.local_hub import LocalHub

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_local_identity_depends_on_content_not_location(tmp_path, tiny_model):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tiny_model.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    first, second = snapshot_local(tiny_model), snapshot_local(copy)
    assert first.identity == second.identity and first.revision == f"sha256:{first.identity}"
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert snapshot_local(copy).identity != first.identity


def test_a_branch_resolves_to_the_hub_commit(local_hub):
    commit = local_hub.repos["tiny/llama"].commit
    assert source_revision(Source(hf="tiny/llama", revision="main"), ".") == commit
    assert source_revision(Source(hf="tiny/llama"), ".") == commit
    assert source_revision(Source(hf="tiny/llama", revision="f" * 40), ".") == "f" * 40  # a pinned commit is taken as is


def test_a_corrupted_download_is_refused_and_its_blob_dropped(tmp_path, tiny_model, monkeypatch):
    from tasks.download import download_source

    with LocalHub() as hub:
        hub.add_repo("tiny/llama", tiny_model)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.corrupt("tiny/llama", "tokenizer.json")  # a non-LFS file: checked by git blob sha1
        with pytest.raises(SourceVerificationError, match="tokenizer.json failed verification"):
            download_source(Source(hf="tiny/llama", revision="main"), str(tmp_path), str(tmp_path / "cache"))
        assert not [p for p in (tmp_path / "cache").rglob("tokenizer.json") if p.exists()]
        hub.repos["tiny/llama"].corrupted.clear()  # the hub heals: the next attempt downloads the file again
        snapshot = download_source(Source(hf="tiny/llama", revision="main"), str(tmp_path), str(tmp_path / "cache"))
    assert snapshot.files["tokenizer.json"] and snapshot.identity == snapshot_local(tiny_model).identity


def test_allow_patterns_limit_what_is_downloaded_and_verified(tmp_path, local_hub):
    from tasks.download import download_source

    snapshot = download_source(Source(hf="tiny/llama", revision="main", allow_patterns=["*.json"]),
                               str(tmp_path), str(tmp_path / "cache"))
    assert sorted(snapshot.files) == ["config.json", "tokenizer.json", "tokenizer_config.json"]


def _failed_with(exc: Exception):
    return Failed(data=exc)


@pytest.mark.parametrize("exc, transient", [
    (httpx.ConnectError("refused"), True),
    (TimeoutError(), True),
    (HfHubHTTPError("busy", response=httpx.Response(503, request=httpx.Request("GET", "http://127.0.0.1"))), True),
    (HfHubHTTPError("gone", response=httpx.Response(404, request=httpx.Request("GET", "http://127.0.0.1"))), False),
    (SourceVerificationError("bad bytes"), False),
])
def test_only_transient_errors_are_retried(exc, transient):
    assert is_transient(None, None, _failed_with(exc)) is transient
