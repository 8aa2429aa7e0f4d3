"""The body of POST /v1/fine_tuning/jobs: OpenAI's fields (including its newer `method` object) plus this server's
own hyperparameters, every one typed and bounded, so a mistyped field is a 400 naming it; and the list endpoints'
query parameters."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.spec import Expect, FineTuneMethod, Message, Probe
from serving.api.schemas import Lenient

MAX_ID = 256  # model and file ids
MAX_PROBES = 64
MAX_PROBE_TEXT = 65_536  # characters: probes are short prompts checked by exact match
MAX_PATTERN = 1024  # a probe's `contains` / `regex`


class Hyperparameters(Lenient):
    """OpenAI's fine-tuning hyperparameters ("auto" allowed), plus this server's own: method, iters, rank..."""

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Literal["auto"] | None = None
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] | None = None
    method: FineTuneMethod | None = None
    iters: Annotated[int, Field(ge=1, le=100_000)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    rank: Annotated[int, Field(ge=1, le=1024)] | None = None
    layers: Annotated[int, Field(ge=1, le=1024)] | None = None


class Supervised(Lenient):
    hyperparameters: Hyperparameters | None = None


class Method(Lenient):
    """OpenAI's `{"type": "supervised", "supervised": {"hyperparameters": {...}}}`."""

    type: Literal["supervised"] = "supervised"
    supervised: Supervised | None = None


# A probe as the spec knows it (factory.spec.Probe: its checks run too), with bounds for text from the network.
class ProbeMessage(Message):
    content: Annotated[str, Field(max_length=MAX_PROBE_TEXT)]


class ProbeExpect(Expect):
    contains: Annotated[str, Field(max_length=MAX_PATTERN)] | None = None
    regex: Annotated[str, Field(max_length=MAX_PATTERN)] | None = None
    max_length: Annotated[int, Field(gt=0, le=MAX_PROBE_TEXT)] | None = None


class ProbeRequest(Probe):
    """A prompt (chat messages or raw text) and what its answer must satisfy, before and after training."""

    messages: Annotated[list[ProbeMessage], Field(min_length=1, max_length=64)] | None = None
    prompt: Annotated[str, Field(max_length=MAX_PROBE_TEXT)] | None = None
    expect: ProbeExpect | None = None


FileId = Annotated[str, Field(min_length=1, max_length=MAX_ID)]


class FineTuningJobRequest(Lenient):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "default", "training_file": "file-0123456789abcdef01234567", "suffix": "mine",
         "hyperparameters": {"n_epochs": 2}}]})

    model: Annotated[str, Field(min_length=1, max_length=MAX_ID, examples=["default"])]
    training_file: FileId
    validation_file: FileId | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    probes: Annotated[list[ProbeRequest], Field(max_length=MAX_PROBES)] | None = None  # exact match before/after
    min_valid_loss_drop: Annotated[float, Field(ge=0, lt=1)] = 0.0

    def resolved_hyperparameters(self) -> dict[str, Any]:
        """Top-level hyperparameters win over the ones nested in `method.supervised`."""
        nested = self.method and self.method.supervised and self.method.supervised.hyperparameters
        return {**(nested.model_dump(exclude_none=True) if nested else {}),
                **(self.hyperparameters.model_dump(exclude_none=True) if self.hyperparameters else {})}


class JobListQuery(BaseModel):
    """GET /v1/fine_tuning/jobs: the newest jobs first."""

    limit: Annotated[int, Field(ge=1, le=100)] = 20


class JobEventsQuery(BaseModel):
    """GET /v1/fine_tuning/jobs/{job_id}/events: the newest events first."""

    limit: Annotated[int, Field(ge=1, le=1000)] = 100
