"""GET /metrics: Prometheus text format, the same whichever worker answers.

Under gunicorn every worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR (made fresh per server run by
the gunicorn config) and the worker that answers adds them all up (prometheus_client's multiprocess mode). Without
that variable (one process, as in the in-process tests) it is this process's own registry. Batch occupancy is
derived here, from the sums: a ratio cannot be added up across workers.
"""
from __future__ import annotations

import asyncio
import os

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

ACTIVE, SLOTS = "factory_sequences_active", "factory_batch_slots"


def metric_source():
    """Every worker's metrics under gunicorn; this process's otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


class WithOccupancy:
    """A source's metrics, plus factory_batch_occupancy: sequences decoding / batch places, per model."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        families = list(self.source.collect())
        yield from families
        sums: dict[str, dict[str, float]] = {ACTIVE: {}, SLOTS: {}}
        for family in families:
            if family.name in sums:
                for sample in family.samples:
                    sums[family.name][sample.labels.get("model", "")] = sample.value
        occupancy = GaugeMetricFamily("factory_batch_occupancy", "Sequences decoding per decode batch place, all "
                                      "loaded copies together (0 to 1)", labels=["model"])
        for model, slots in sorted(sums[SLOTS].items()):
            if slots > 0:
                occupancy.add_metric([model], sums[ACTIVE].get(model, 0.0) / slots)
        yield occupancy


class Metrics:
    def __init__(self):
        self.exposition = WithOccupancy(metric_source())

    async def on_get(self, req, resp):
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.data = await asyncio.to_thread(generate_latest, self.exposition)  # reads every worker's files
