"""GET /metrics: Prometheus text format, read live from this worker's models (each gunicorn worker reports itself)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serving.inference.handle import ModelCatalog


class ModelCollector:
    def __init__(self, models: ModelCatalog):
        self.models = models

    def collect(self):
        loaded = GaugeMetricFamily("factory_model_loaded_bytes", "Artifact bytes of each loaded model", labels=["model"])
        active = GaugeMetricFamily("factory_sequences_active", "Sequences in the decode batch", labels=["model"])
        queued = GaugeMetricFamily("factory_sequences_queued", "Sequences waiting to join the batch", labels=["model"])
        tokens = CounterMetricFamily("factory_generated_tokens", "Tokens generated", labels=["model"])
        steps = CounterMetricFamily("factory_decode_steps", "Decode steps taken", labels=["model"])
        for stats in self.models.stats():
            loaded.add_metric([stats.ref], stats.loaded_bytes)
            active.add_metric([stats.ref], stats.active)
            queued.add_metric([stats.ref], stats.queued)
            tokens.add_metric([stats.ref], stats.generated_tokens)
            steps.add_metric([stats.ref], stats.decode_steps)
        yield from (loaded, active, queued, tokens, steps)


class Metrics:
    def __init__(self, models: ModelCatalog):
        self.registry = CollectorRegistry()
        self.registry.register(ModelCollector(models))

    async def on_get(self, req, resp):
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.data = generate_latest(self.registry)
