"""Request and response bodies of the routes the web UI uses beside the OpenAI API: live-event tickets, the
registry catalog and its alias changes, builds, the hub search and adding a model (docs/ui-api.md)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from serving.api.schemas import Lenient
from serving.api.schemas.responses import Shape, Timestamp

Name = Annotated[str, Field(min_length=1, max_length=64)]


# ---------------------------------------------------------------- requests


class PromoteRequest(Lenient):
    version: int | Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="a version number, or a selector of the model (`latest`, an alias)")
    alias: Name = Field(description="the alias to point at it, e.g. `prod` (not `latest`)")


class RollbackRequest(Lenient):
    alias: Name = Field("prod", description="the alias to move back to where it pointed before its last move")


class BuildRequest(Lenient):
    spec: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        description="a spec's name or file name in the server's specs folder")


class SpecRequest(Lenient):
    spec: Annotated[str, Field(min_length=1, max_length=1_000_000)] = Field(description="the spec, as YAML text")
    build: bool = Field(True, description="start its build once it is written")


class ListQuery(BaseModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class HubSearchQuery(BaseModel):
    search: Annotated[str, Field(max_length=200)] = ""
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class UploadQuery(BaseModel):
    name: Annotated[str, Field(max_length=64)] | None = Field(None, description="the model's name (default: from "
                                                                                "the file's name)")


class GgufUpload(BaseModel):
    """A multipart/form-data upload of one `.gguf` file (a raw application/octet-stream body works too)."""

    file: bytes


# ---------------------------------------------------------------- responses


class EventTicket(Shape):
    ticket: str = Field(description="open ws(s)://HOST/v1/events?ticket=... with it, once, within expires_in")
    expires_in: int


class ArtifactFormat(Shape):
    key: str = Field(description="the artifact's format key: gguf-q8_0, mlx-float16, ...")
    format: str
    quantization: str | None
    bytes: int


class RegistryVersion(Shape):
    ref: str
    name: str
    version: int
    created: float
    aliases: list[str]
    spec_hash: str | None
    source_revision: str | None
    flow_run_id: str | None
    formats: list[ArtifactFormat]
    report: dict[str, Any] = Field(description="the validation report: measured values and thresholds per format")
    lineage: dict[str, Any]


class RegistryModel(Shape):
    object: Literal["registry.model"]
    name: str
    task: str
    aliases: dict[str, int]
    versions: list[RegistryVersion]


class RegistryModelList(Shape):
    object: Literal["list"]
    data: list[RegistryModel]


class BuildObject(Shape):
    object: Literal["build"]
    id: str
    spec: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: Timestamp | None
    finished_at: Timestamp | None
    error: str | None


class BuildList(Shape):
    object: Literal["list"]
    data: list[BuildObject]
    has_more: bool


class LossPoint(Shape):
    step: int
    train_loss: float | None
    valid_loss: float | None


class LossCurve(Shape):
    object: Literal["fine_tuning.job.loss"]
    job_id: str
    status: str
    points: list[LossPoint]


class HubModel(Shape):
    id: str
    downloads: int | None
    likes: int | None
    tags: list[str]
    last_modified: str | None


class HubModelList(Shape):
    object: Literal["list"]
    data: list[HubModel]


class HubFile(Shape):
    path: str
    size: int | None


class HubFileList(Shape):
    object: Literal["list"]
    repo: str
    data: list[HubFile]


class WrittenSpec(Shape):
    object: Literal["spec"]
    name: str
    path: str
    build: BuildObject | None
