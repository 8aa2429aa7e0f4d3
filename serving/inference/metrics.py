"""What the inference layer measures, as Prometheus metrics labelled by model version (`tiny@1`).

Module-level prometheus_client metrics, so that under gunicorn (PROMETHEUS_MULTIPROC_DIR set by its config before any
worker imports prometheus_client) every worker writes its values to shared files and /metrics adds them up. Gauges
are per worker and summed over the live ones (`livesum`): a worker that exits takes its gauges with it, while its
counts stay in the counters and histograms. Without that variable (in-process tests) they are plain metrics.

The scheduler thread writes the token timings and the batch gauges; the pool writes what is loaded.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds. First tokens include rendering, tokenizing and waiting for a batch slot; later ones are one decode step.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)

time_to_first_token = Histogram(
    "factory_time_to_first_token_seconds", "From a request reaching its model to each sequence's first token",
    ["model"], buckets=TTFT_BUCKETS)
inter_token_latency = Histogram(
    "factory_inter_token_latency_seconds", "Between consecutive tokens of a sequence", ["model"], buckets=ITL_BUCKETS)
generated_tokens = Counter("factory_generated_tokens", "Tokens generated, finished sequences or not", ["model"])
cached_prompt_tokens = Counter("factory_cached_prompt_tokens", "Prompt tokens reused from the prefix cache", ["model"])
# Speculative decoding, by proposer (ngram, draft): the acceptance rate is accepted / drafted (ratios do not add up
# across workers; counts do)
drafted_tokens = Counter("factory_speculative_drafted_tokens", "Tokens proposed for speculative decoding",
                         ["model", "method"])
accepted_tokens = Counter("factory_speculative_accepted_tokens", "Proposed tokens the model accepted",
                          ["model", "method"])
decode_steps = Counter("factory_decode_steps", "Decode steps taken", ["model"])
sequences_active = Gauge("factory_sequences_active", "Sequences in a decode batch", ["model"],
                         multiprocess_mode="livesum")
sequences_queued = Gauge("factory_sequences_queued", "Sequences waiting for a place in a decode batch (queue depth)",
                         ["model"], multiprocess_mode="livesum")
batch_slots = Gauge("factory_batch_slots", "Places in decode batches (max batch per loaded copy)", ["model"],
                    multiprocess_mode="livesum")
models_loaded = Gauge("factory_models_loaded", "Loaded copies of a model (each worker loads its own)", ["model"],
                      multiprocess_mode="livesum")
model_loaded_bytes = Gauge("factory_model_loaded_bytes", "Artifact bytes of a model's loaded copies", ["model"],
                           multiprocess_mode="livesum")


# Loading and unloading move the gauges by differences, and an unloaded model's series stay (at zero): under gunicorn
# a removed series would keep its last value in this worker's file.

def model_loaded(ref: str, nbytes: int) -> None:
    models_loaded.labels(ref).inc()
    model_loaded_bytes.labels(ref).inc(nbytes)


def model_unloaded(ref: str, nbytes: int) -> None:
    models_loaded.labels(ref).dec()
    model_loaded_bytes.labels(ref).dec(nbytes)
