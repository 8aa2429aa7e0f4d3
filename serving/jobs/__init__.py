"""Fine-tuning jobs as the API sees them: the job and event records, the errors, and the backend contract.

The one backend today is Prefect (`serving/jobs/prefect.py`): a job is a run of the fine-tune deployment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Job:
    id: str
    status: str  # queued | running | succeeded | failed | cancelled
    base: str | None
    created_at: int | None
    finished_at: int | None
    fine_tuned_model: str | None
    training_file: str | None
    validation_file: str | None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    trained_tokens: int | None = None
    error: str | None = None


@dataclass
class JobEvent:
    id: str
    created_at: int
    level: str  # info | warn | error
    message: str
    data: dict[str, Any] | None = None  # training metrics, for a step's loss line


class JobNotFound(Exception):
    def __init__(self, job_id: str):
        super().__init__(f"No such fine-tuning job: {job_id}")


class JobConflict(Exception):
    """The job cannot do that in its state (cancelling a job that has ended)."""


class JobsUnavailable(Exception):
    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class FineTuneJobs(Protocol):
    async def create(self, parameters: dict[str, Any]) -> Job:
        ...

    async def list(self, limit: int) -> tuple[list[Job], bool]:
        """The newest jobs first, and whether there are more."""

    async def get(self, job_id: str) -> Job:
        ...

    async def events(self, job_id: str, limit: int) -> list[JobEvent]:
        ...

    async def cancel(self, job_id: str) -> Job:
        ...
