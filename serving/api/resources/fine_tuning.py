"""/v1/fine_tuning/jobs (and POST /fine-tune): OpenAI's fine-tuning job API over a job backend (Prefect's)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from factory.files import FileStore
from serving.api.errors import invalid
from serving.api.schemas import parse_query, read_json
from serving.api.schemas.fine_tuning import FineTuningJobRequest, JobEventsQuery, JobListQuery
from serving.inference.handle import ModelCatalog
from serving.jobs import FineTuneJobs, Job, JobEvent


class FineTuningJobs:
    def __init__(self, models: ModelCatalog, files: FileStore, jobs: FineTuneJobs):
        self.models, self.files, self.jobs = models, files, jobs

    async def on_post(self, req, resp):
        request: FineTuningJobRequest = await read_json(req, FineTuningJobRequest)
        base = await self.models.describe(request.model)
        if base.engine == "remote":  # a provider's model: its weights are not ours to train
            raise invalid(f"{request.model} is served by a provider; only registry models can be fine-tuned",
                          param="model", code="model_not_supported")
        parameters: dict[str, Any] = {
            "base": base.ref, "training_file": self._file_path(request.training_file, "training_file"),
            "validation_file": (self._file_path(request.validation_file, "validation_file")
                                if request.validation_file else None),
            "hyperparameters": request.resolved_hyperparameters(), "suffix": request.suffix,
            "seed": request.seed or 0,
            "probes": [probe.model_dump(exclude_none=True) for probe in request.probes] if request.probes else None,
            "min_valid_loss_drop": request.min_valid_loss_drop,
        }
        resp.media = job_object(await self.jobs.create(parameters))

    async def on_get(self, req, resp):
        limit = parse_query(req, JobListQuery).limit
        jobs, has_more = await self.jobs.list(limit)
        resp.media = {"object": "list", "data": [job_object(job) for job in jobs], "has_more": has_more}

    async def on_get_one(self, req, resp, job_id: str):
        resp.media = job_object(await self.jobs.get(job_id))

    async def on_get_events(self, req, resp, job_id: str):
        limit = parse_query(req, JobEventsQuery).limit
        events = await self.jobs.events(job_id, limit)
        resp.media = {"object": "list", "data": [event_object(event) for event in events],
                      "has_more": len(events) == limit}

    async def on_post_cancel(self, req, resp, job_id: str):
        resp.media = job_object(await self.jobs.cancel(job_id))

    def _file_path(self, file_id: str, param: str) -> str:
        if self.files.get(file_id) is None:
            raise invalid(f"no uploaded file {file_id}", param=param, code="file_not_found")
        return str(self.files.path(file_id))


def job_object(job: Job) -> dict[str, Any]:
    fields = asdict(job)
    error, base = fields.pop("error"), fields.pop("base")
    return {**fields, "object": "fine_tuning.job", "model": base, "organization_id": "llm-factory",
            "result_files": [], "estimated_finish": None, "integrations": [],
            "error": {"code": "fine_tune_failed", "message": error, "param": None} if error else None}


def event_object(event: JobEvent) -> dict[str, Any]:
    return {"object": "fine_tuning.job.event", **asdict(event), "type": "metrics" if event.data else "message"}
