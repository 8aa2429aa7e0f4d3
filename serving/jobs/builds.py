"""Builds as the API sees them: a build is a run of the `build-model/on-demand` Prefect deployment (what
`factory deploy` registers from prefect.yaml; `factory build` runs the same flow in-process). A build's id is
`build-<flow run id>`. Like fine-tunes, there is no database of our own: Prefect's flow runs are the record.
"""
from __future__ import annotations

from dataclasses import dataclass

from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort

from serving.jobs.prefect import STATUS, prefect_client, read_flow_run, run_deployment

BUILD_FLOW = "build-model"
BUILD_DEPLOYMENT = f"{BUILD_FLOW}/on-demand"


@dataclass
class Build:
    id: str
    spec: str | None
    status: str  # queued | running | succeeded | failed | cancelled
    created_at: int | None
    finished_at: int | None
    error: str | None = None


class PrefectBuilds:
    async def start(self, spec: str, specs_dir: str) -> Build:
        """Run the build deployment for `spec` (a path, or a name looked up in `specs_dir`, as the flow does)."""
        return _build(await run_deployment(BUILD_DEPLOYMENT, {"spec": spec, "specs_dir": specs_dir}, "build"))

    async def list(self, limit: int) -> tuple[list[Build], bool]:
        async with prefect_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[BUILD_FLOW])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=limit + 1)
        return [_build(run) for run in runs[:limit]], len(runs) > limit

    async def get(self, build_id: str) -> Build:
        return _build(await read_flow_run(build_id, "build-"))


def _build(run) -> Build:
    status = STATUS.get(run.state.type, "queued") if run.state else "queued"
    spec = (run.parameters or {}).get("spec")
    return Build(id=f"build-{run.id}", spec=str(spec).rsplit("/", 1)[-1].removesuffix(".yaml") if spec else None,
                 status=status, created_at=int(run.created.timestamp()) if run.created else None,
                 finished_at=int(run.end_time.timestamp()) if run.end_time else None,
                 error=(run.state.message or "the build failed") if status == "failed" else None)
