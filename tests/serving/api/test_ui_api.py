"""The web UI's routes in-process, for the cases a real server is not needed for: a fine-tune's loss curve from its
job events, builds of specs outside the specs folder, and the event log's own rules (dedupe, bounds, tickets)."""
from __future__ import annotations

import time

import httpx
import pytest

from serving.app import create_app
from serving.events import log as event_log
from serving.events.log import EventLog
from serving.jobs import JobEvent
from tests.fixtures.scripted_engine import scripted_pool
from tests.serving.api.test_openapi import JOB, ScriptedJobs

pytestmark = pytest.mark.anyio


class LossJobs(ScriptedJobs):
    """A fine-tune's events as Prefect returns them: newest first, train and valid lines for the same step."""

    async def events(self, job_id, limit):
        lines = [(1, "train", 2.5), (2, "train", 1.75), (2, "valid", 1.9), (3, "train", 1.25)]
        events = [JobEvent(id=f"ftevent-{i}", created_at=i, level="info", message=f"step {step}/3: {kind} loss {loss}",
                           data={"step": step, "total_steps": 3, f"{kind}_loss": loss})
                  for i, (step, kind, loss) in enumerate(lines)]
        events.insert(2, JobEvent(id="ftevent-x", created_at=2, level="info", message="saving adapters"))
        return list(reversed(events))


@pytest.fixture
async def client(tmp_path):
    pool, _, config = scripted_pool(tmp_path)
    app = create_app(config, models=pool, jobs=LossJobs())
    await pool.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as http:
        http.config = config
        yield http
    await pool.stop()


async def test_the_loss_curve_is_the_job_s_step_lines_oldest_first(client):
    curve = (await client.get(f"/v1/fine_tuning/jobs/{JOB.id}/loss")).json()
    assert curve == {"object": "fine_tuning.job.loss", "job_id": JOB.id, "status": JOB.status, "points": [
        {"step": 1, "train_loss": 2.5, "valid_loss": None}, {"step": 2, "train_loss": 1.75, "valid_loss": 1.9},
        {"step": 3, "train_loss": 1.25, "valid_loss": None}]}
    missing = await client.get("/v1/fine_tuning/jobs/ftjob-nope/loss")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    down = await client.get("/v1/fine_tuning/jobs/ftjob-down/loss")
    assert down.status_code == 503 and down.json()["error"]["code"] == "prefect_unreachable"


@pytest.mark.parametrize("spec", ["nope", "../registry/index", "/etc/passwd", "..", "a/b"])
async def test_only_specs_of_the_specs_folder_are_built(client, spec):
    (client.config.specs_dir.parent / "registry" / "index.yaml").write_text("name: x\n")  # outside the folder
    reply = await client.post("/v1/admin/builds", json={"spec": spec})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "spec_not_found"


async def test_a_promote_to_a_bad_alias_is_a_400_and_an_unknown_model_a_404(client):
    bad = await client.post("/v1/admin/registry/models/tiny/promote", json={"version": 1, "alias": "Not Valid"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    unknown = await client.post("/v1/admin/registry/models/nope/rollback", json={})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_an_event_seen_by_several_workers_is_kept_once(tmp_path):
    first, second = EventLog(tmp_path / "events.db"), EventLog(tmp_path / "events.db")  # two workers' handles
    event = {"type": "registry.published", "time": time.time(), "ref": "tiny@2"}
    kept = first.append(event, dedupe="published:tiny@2")
    assert second.append(event, dedupe="published:tiny@2") is None
    later = second.append({"type": "generation", "time": time.time()})
    assert [e["id"] for e in first.after(0)] == [kept, later] and kept < later
    assert first.after(0)[0]["ref"] == "tiny@2"


def test_the_log_keeps_only_the_newest_events(tmp_path, monkeypatch):
    monkeypatch.setattr(event_log, "KEEP", 30)
    monkeypatch.setattr(event_log, "PRUNE_EVERY", 10)
    log = EventLog(tmp_path / "events.db")
    for _ in range(100):
        log.append({"type": "generation", "time": time.time()})
    kept = [event["id"] for event in log.after(0)]
    assert kept[-1] == 100 and 30 <= len(kept) < 40  # pruned to the newest 30 at each 10th append


def test_a_ticket_is_single_use_and_expires(tmp_path):
    log = EventLog(tmp_path / "events.db")
    ticket = log.issue_ticket("ui-admin", ttl_s=30)
    assert log.redeem_ticket(ticket) == (True, "ui-admin")
    assert log.redeem_ticket(ticket) == (False, None)
    assert log.redeem_ticket(log.issue_ticket(None, ttl_s=-1)) == (False, None)
