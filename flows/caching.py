"""Prefect's cache, as the flows use it: a cache entry remembers a step's result (e.g. the path of a converted
model), which is only worth anything while that output is still on disk.

The keys themselves are content keys (`factory/content_keys.py`), computed by the tasks.
"""
from __future__ import annotations

from pathlib import Path

from prefect import Task


def refreshed_if_missing(task: Task, output: Path) -> Task:
    """`task`, told to recompute and overwrite its cache entry when its output directory is gone."""
    return task.with_options(refresh_cache=not output.exists())
