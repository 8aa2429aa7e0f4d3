"""The fine-tune job backend on Prefect, the one place serving talks to Prefect.

There is no job database: a job id is `ftjob-<flow run id>`, its status is the flow run's state, its events are the
flow run's log lines, and its model is the registry version that flow run published. The server only uses Prefect's
API; it never imports `flows/` or `tasks/`.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, FlowFilter,
                                            FlowFilterName, LogFilter, LogFilterFlowRunId)
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling, StateType

from factory.jobs import FINETUNE_DEPLOYMENT, FINETUNE_FLOW, RESULT_ARTIFACT
from factory.registry import Registry, RegistryError, Version
from serving.jobs import Job, JobConflict, JobEvent, JobNotFound, JobsUnavailable

PAGE = 200  # Prefect's most log lines per read_logs call

STATUS = {StateType.SCHEDULED: "queued", StateType.PENDING: "queued", StateType.PAUSED: "queued",
          StateType.RUNNING: "running", StateType.COMPLETED: "succeeded", StateType.FAILED: "failed",
          StateType.CRASHED: "failed", StateType.CANCELLED: "cancelled", StateType.CANCELLING: "cancelled"}
ENDED = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
STEP = re.compile(r"step (\d+)/(\d+): (train|valid) loss ([0-9.na]+)")
LEVELS = {10: "info", 20: "info", 30: "warn", 40: "error", 50: "error"}


@asynccontextmanager
async def prefect_client() -> AsyncIterator[Any]:
    """Prefect's client, with Prefect being down (or answering 5xx) reported as JobsUnavailable: the API's 503."""
    try:
        async with get_client() as client:
            yield client
    except httpx.RequestError as exc:  # refused, timed out: no Prefect server where PREFECT_API_URL points
        raise JobsUnavailable(f"the Prefect API cannot be reached ({type(exc).__name__}); fine-tuning needs the "
                              "Prefect server that `factory up` starts", code="prefect_unreachable") from None
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code < 500:
            raise
        raise JobsUnavailable(f"the Prefect API failed ({exc.response.status_code})", code="prefect_error") from None


async def run_deployment(name: str, parameters: dict[str, Any], tag: str):
    """A new flow run of the deployment `name` (JobsUnavailable when `factory deploy` has not registered it)."""
    async with prefect_client() as client:
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise JobsUnavailable(f"the {name} deployment is not registered; run `factory deploy`",
                                  code="deployment_missing") from None
        return await client.create_flow_run_from_deployment(deployment.id, parameters=parameters, tags=[tag])


async def read_flow_run(job_id: str, prefix: str):
    """The flow run behind a job id (`prefix` + the run's UUID); JobNotFound for anything else."""
    try:
        run_id = uuid.UUID(job_id.removeprefix(prefix))
    except ValueError:
        raise JobNotFound(job_id) from None
    async with prefect_client() as client:
        try:
            return await client.read_flow_run(run_id)
        except ObjectNotFound:
            raise JobNotFound(job_id) from None


class PrefectJobs:
    def __init__(self, registry: Registry):
        self.registry = registry

    async def create(self, parameters: dict[str, Any]) -> Job:
        return await self._job(await run_deployment(FINETUNE_DEPLOYMENT, parameters, "fine-tune"))

    async def list(self, limit: int) -> tuple[list[Job], bool]:
        async with prefect_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FINETUNE_FLOW])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=limit + 1)
        return [await self._job(run) for run in runs[:limit]], len(runs) > limit

    async def get(self, job_id: str) -> Job:
        return await self._job(await self._run(job_id))

    async def events(self, job_id: str, limit: int) -> list[JobEvent]:
        run = await self._run(job_id)
        logs: list = []
        async with prefect_client() as client:
            while len(logs) < limit:  # Prefect answers at most PAGE lines a call (a 422 past it)
                page = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                              sort=LogSort.TIMESTAMP_DESC, limit=min(PAGE, limit - len(logs)),
                                              offset=len(logs))
                logs += page
                if len(page) < PAGE:
                    break
        return [_event(log) for log in logs]

    async def cancel(self, job_id: str) -> Job:
        run = await self._run(job_id)
        if run.state.type in ENDED:
            raise JobConflict(f"job {job_id} has already ended ({STATUS[run.state.type]})")
        # A run still waiting for a worker is cancelled outright; a running one is asked to stop (its worker
        # kills the process and marks it cancelled).
        state = Cancelling() if run.state.type == StateType.RUNNING else Cancelled()
        async with prefect_client() as client:
            await client.set_flow_run_state(run.id, state, force=True)
            run = await client.read_flow_run(run.id)
        return await self._job(run)

    # ------------------------------------------------------------------

    async def _run(self, job_id: str):
        run = await read_flow_run(job_id, "ftjob-")
        if run.flow_id is None:
            raise JobNotFound(job_id)
        return run

    async def _fine_tuned_model(self, run_id: uuid.UUID) -> Version | None:
        """The registry version a succeeded run ended with: the one it published, or the identical one an earlier
        run had published (the flow records the ref as an artifact either way)."""
        async with prefect_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=[RESULT_ARTIFACT])))
        if not artifacts:
            return None
        try:
            return await asyncio.to_thread(self.registry.resolve, str(artifacts[0].data).strip())
        except RegistryError:  # deleted since, or written by another registry
            return None

    async def _job(self, run) -> Job:
        p = run.parameters
        status = STATUS.get(run.state.type, "queued") if run.state else "queued"
        published = await self._fine_tuned_model(run.id) if status == "succeeded" else None
        trained_tokens = None
        if published is not None:
            trained_tokens = (await asyncio.to_thread(published.manifest))["lineage"].get("trained_tokens")
        return Job(
            id=f"ftjob-{run.id}", status=status, base=p.get("base"),
            created_at=int(run.created.timestamp()) if run.created else None,
            finished_at=int(run.end_time.timestamp()) if run.end_time else None,
            fine_tuned_model=published.ref if published else None,
            training_file=_file_id(p.get("training_file")), validation_file=_file_id(p.get("validation_file")),
            hyperparameters=p.get("hyperparameters") or {}, suffix=p.get("suffix"), seed=p.get("seed"),
            trained_tokens=trained_tokens,
            error=(run.state.message or "the fine-tune failed") if status == "failed" else None,
        )




def _file_id(path: str | None) -> str | None:
    return path.rsplit("/", 1)[-1].removesuffix(".jsonl") if path else None


def _event(log) -> JobEvent:
    match = STEP.search(log.message)
    data = {"step": int(match[1]), "total_steps": int(match[2]), f"{match[3]}_loss": float(match[4])} if match else None
    return JobEvent(id=f"ftevent-{log.id}", created_at=int(log.timestamp.timestamp()),
                    level=LEVELS.get(log.level, "info"), message=log.message, data=data)
