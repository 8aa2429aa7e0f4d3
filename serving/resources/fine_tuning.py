"""/v1/fine_tuning/jobs (and POST /fine-tune): jobs are runs of the `finetune-model/on-demand` Prefect deployment.

There is no job database: a job id is `ftjob-<flow run id>`, its status is the flow run's state, its events are the
flow run's log lines, and its model is the registry version that flow run published.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling, StateType

from factory.files import FileStore
from factory.registry import Registry
from serving.errors import APIError, invalid, model_not_found
from serving.pool import ModelPool, UnknownModel
from serving.schemas import FineTuningJobRequest, parse

DEPLOYMENT = "finetune-model/on-demand"
FLOW = "finetune-model"
STATUS = {StateType.SCHEDULED: "queued", StateType.PENDING: "queued", StateType.PAUSED: "queued",
          StateType.RUNNING: "running", StateType.COMPLETED: "succeeded", StateType.FAILED: "failed",
          StateType.CRASHED: "failed", StateType.CANCELLED: "cancelled", StateType.CANCELLING: "cancelled"}
STEP = re.compile(r"step (\d+)/(\d+): (train|valid) loss ([0-9.na]+)")


def job_not_found(job_id: str) -> APIError:
    return APIError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")


class FineTuningJobs:
    def __init__(self, pool: ModelPool, files: FileStore):
        self.pool, self.files, self.registry = pool, files, pool.registry

    async def on_post(self, req, resp):
        request: FineTuningJobRequest = parse(FineTuningJobRequest, await req.get_media())
        try:
            base = await self.pool.resolve(request.model)
        except UnknownModel as exc:
            raise model_not_found(request.model, str(exc)) from None
        parameters: dict[str, Any] = {
            "base": base.ref, "training_file": str(self._file_path(request.training_file, "training_file")),
            "validation_file": (str(self._file_path(request.validation_file, "validation_file"))
                                if request.validation_file else None),
            "hyperparameters": request.resolved_hyperparameters(), "suffix": request.suffix,
            "seed": request.seed or 0, "probes": request.probes,
            "min_valid_loss_drop": request.min_valid_loss_drop,
        }
        async with get_client() as client:
            try:
                deployment = await client.read_deployment_by_name(DEPLOYMENT)
            except ObjectNotFound:
                raise APIError(503, f"the {DEPLOYMENT} deployment is not registered; run `factory deploy`",
                               type_="server_error", code="deployment_missing") from None
            run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters,
                                                               tags=["fine-tune"])
        resp.media = await self._job(run)

    async def on_get(self, req, resp):
        limit = req.get_param_as_int("limit", min_value=1, max_value=100, default=20)
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=limit + 1)
        resp.media = {"object": "list", "data": [await self._job(r) for r in runs[:limit]],
                      "has_more": len(runs) > limit}

    async def on_get_one(self, req, resp, job_id: str):
        resp.media = await self._job(await self._run(job_id))

    async def on_get_events(self, req, resp, job_id: str):
        run = await self._run(job_id)
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=100)
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                          sort=LogSort.TIMESTAMP_DESC, limit=limit)
        resp.media = {"object": "list", "data": [_event(log) for log in logs], "has_more": len(logs) == limit}

    async def on_post_cancel(self, req, resp, job_id: str):
        run = await self._run(job_id)
        if run.state.type in (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED):
            raise invalid(f"job {job_id} has already ended ({STATUS[run.state.type]})", param="fine_tuning_job_id")
        # A run still waiting for a worker is cancelled outright; a running one is asked to stop (its worker
        # kills the process and marks it cancelled).
        state = Cancelling() if run.state.type == StateType.RUNNING else Cancelled()
        async with get_client() as client:
            await client.set_flow_run_state(run.id, state, force=True)
            run = await client.read_flow_run(run.id)
        resp.media = await self._job(run)

    # ------------------------------------------------------------------

    def _file_path(self, file_id: str, param: str):
        if self.files.get(file_id) is None:
            raise invalid(f"no uploaded file {file_id}", param=param, code="file_not_found")
        return self.files.path(file_id)

    async def _run(self, job_id: str):
        try:
            run_id = uuid.UUID(job_id.removeprefix("ftjob-"))
        except ValueError:
            raise job_not_found(job_id) from None
        async with get_client() as client:
            try:
                run = await client.read_flow_run(run_id)
            except ObjectNotFound:
                raise job_not_found(job_id) from None
        if run.flow_id is None:
            raise job_not_found(job_id)
        return run

    async def _job(self, run) -> dict[str, Any]:
        p = run.parameters
        status = STATUS.get(run.state.type, "queued") if run.state else "queued"
        published = await asyncio.to_thread(_published_by, self.registry, str(run.id)) if status == "succeeded" else None
        error = None
        if status == "failed":
            error = {"code": "fine_tune_failed", "message": run.state.message or "the fine-tune failed", "param": None}
        return {
            "id": f"ftjob-{run.id}", "object": "fine_tuning.job", "model": p.get("base"),
            "created_at": int(run.created.timestamp()) if run.created else None,
            "finished_at": int(run.end_time.timestamp()) if run.end_time else None,
            "fine_tuned_model": published.ref if published else None,
            "organization_id": "llm-factory", "result_files": [], "status": status,
            "training_file": _file_id(p.get("training_file")), "validation_file": _file_id(p.get("validation_file")),
            "hyperparameters": p.get("hyperparameters") or {}, "suffix": p.get("suffix"), "seed": p.get("seed"),
            "trained_tokens": (published.manifest()["lineage"].get("trained_tokens") if published else None),
            "error": error, "estimated_finish": None, "integrations": [],
        }


def _published_by(registry: Registry, flow_run_id: str):
    for version in reversed(registry.list()):
        if version.flow_run_id == flow_run_id:
            return version
    return None


def _file_id(path: str | None) -> str | None:
    return path.rsplit("/", 1)[-1].removesuffix(".jsonl") if path else None


def _event(log) -> dict[str, Any]:
    match = STEP.search(log.message)
    data = {"step": int(match[1]), "total_steps": int(match[2]), f"{match[3]}_loss": float(match[4])} if match else None
    level = {10: "info", 20: "info", 30: "warn", 40: "error", 50: "error"}.get(log.level, "info")
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{log.id}", "created_at": int(log.timestamp.timestamp()),
            "level": level, "message": log.message, "data": data, "type": "metrics" if match else "message"}
