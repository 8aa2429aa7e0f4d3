"""Builds and job progress for the web UI: GET /v1/builds[/{build_id}], POST /v1/admin/builds (a run of the
build deployment on Prefect, as `factory build` runs the flow in-process), and a fine-tune's loss curve at
GET /v1/fine_tuning/jobs/{job_id}/loss (its step lines, oldest first)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from serving.api.errors import APIError
from serving.api.schemas import parse_query, read_json
from serving.api.schemas.ui import BuildRequest, ListQuery
from serving.jobs import FineTuneJobs, JobNotFound
from serving.jobs.builds import Build, PrefectBuilds

LOSS_LINES = 10_000  # log lines read for a loss curve: a long fine-tune logs a line per reporting step


class Builds:
    def __init__(self, builds: PrefectBuilds, specs_dir: Path):
        self.builds, self.specs_dir = builds, specs_dir

    async def on_get(self, req, resp):
        builds, has_more = await self.builds.list(parse_query(req, ListQuery).limit)
        resp.media = {"object": "list", "data": [build_object(build) for build in builds], "has_more": has_more}

    async def on_get_one(self, req, resp, build_id: str):
        try:
            resp.media = build_object(await self.builds.get(build_id))
        except JobNotFound:
            raise APIError(404, f"No such build: {build_id}", param="build_id", code="build_not_found") from None

    async def on_post_start(self, req, resp):
        request: BuildRequest = await read_json(req, BuildRequest)
        resp.media = build_object(await self.builds.start(str(spec_file(self.specs_dir, request.spec)),
                                                          str(self.specs_dir)))


def spec_file(specs_dir: Path, spec: str) -> Path:
    """A spec of the specs folder, by name or file name; nothing outside the folder."""
    name = spec.removesuffix(".yaml").removesuffix(".yml")
    candidates = [specs_dir / f"{name}{suffix}" for suffix in (".yaml", ".yml")]
    found = next((path for path in candidates if path.is_file() and "/" not in name and name not in ("", ".", "..")),
                 None)
    if found is None:
        raise APIError(404, f"no spec {spec!r} in the server's specs folder", param="spec", code="spec_not_found")
    return found


def build_object(build: Build) -> dict[str, Any]:
    return {"object": "build", **asdict(build)}


class LossCurve:
    def __init__(self, jobs: FineTuneJobs):
        self.jobs = jobs

    async def on_get(self, req, resp, job_id: str):
        job = await self.jobs.get(job_id)
        points: dict[int, dict[str, Any]] = {}
        for event in reversed(await self.jobs.events(job_id, LOSS_LINES)):  # newest first -> oldest first
            if event.data and "step" in event.data:
                point = points.setdefault(event.data["step"], {"step": event.data["step"], "train_loss": None,
                                                               "valid_loss": None})
                for key in ("train_loss", "valid_loss"):
                    if key in event.data:
                        point[key] = event.data[key]
        resp.media = {"object": "fine_tuning.job.loss", "job_id": job.id, "status": job.status,
                      "points": sorted(points.values(), key=lambda point: point["step"])}
