"""GET /metrics: Prometheus text format, read live from this worker's pool (each gunicorn worker reports itself)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serving.pool import ModelPool


class PoolCollector:
    def __init__(self, pool: ModelPool):
        self.pool = pool

    def collect(self):
        loaded = GaugeMetricFamily("factory_model_loaded_bytes", "Artifact bytes of each loaded model", labels=["model"])
        active = GaugeMetricFamily("factory_sequences_active", "Sequences in the decode batch", labels=["model"])
        queued = GaugeMetricFamily("factory_sequences_queued", "Sequences waiting to join the batch", labels=["model"])
        tokens = CounterMetricFamily("factory_generated_tokens", "Tokens generated", labels=["model"])
        steps = CounterMetricFamily("factory_decode_steps", "Decode steps taken", labels=["model"])
        for ref, model in list(self.pool.loaded.items()):
            loaded.add_metric([ref], model.nbytes)
            active.add_metric([ref], len(model.scheduler.active))
            queued.add_metric([ref], len(model.scheduler.incoming))
            tokens.add_metric([ref], model.scheduler.tokens)
            steps.add_metric([ref], model.scheduler.steps)
        yield from (loaded, active, queued, tokens, steps)


class Metrics:
    def __init__(self, pool: ModelPool):
        self.registry = CollectorRegistry()
        self.registry.register(PoolCollector(pool))

    async def on_get(self, req, resp):
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.data = generate_latest(self.registry)
