"""Prefect objects the factory relies on, created idempotently: the heavy-step concurrency limit and the work pool."""
from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.convert import HEAVY

WORK_POOL = "factory"


def ensure_heavy_limit(limit: int = 1) -> None:
    """Without this limit `concurrency(HEAVY)` would only warn and let every conversion run at once."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(HEAVY)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=HEAVY, limit=limit))
            except ObjectAlreadyExists:
                pass  # another process created it meanwhile


def ensure_work_pool() -> None:
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
        except ObjectAlreadyExists:
            pass
