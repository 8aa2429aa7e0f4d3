"""One OS thread for every llama.cpp computation of this process (decodes and loads of every model and draft).

llama-cpp-python's CPU backend is built with OpenMP, and an OpenMP thread team belongs to the thread that starts
it: each scheduler thread that decodes brings a team of its own. Once the process has more OpenMP threads than
cores, libgomp stops spinning at its barriers and sleeps instead, and ggml meets a barrier after every operation:
single-stream decode fell from ~100 to ~25 tok/s as soon as a second model had decoded on its own scheduler thread,
for as long as both stayed loaded (OMP_WAIT_POLICY=ACTIVE avoided that but kept a core spinning while idle). So the
scheduler threads hand their decodes to this one thread and wait: one team, whatever is loaded. A handoff costs tens
of microseconds against milliseconds per decode; models on the same cores could not compute at once anyway.
Embedding models' batches run here too (`embed_batcher.py`).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama.cpp")
_LOCAL = threading.local()


def _mark() -> None:
    _LOCAL.inside = True


_EXECUTOR.submit(_mark).result()


def executor() -> ThreadPoolExecutor:
    """The compute thread as an executor (`loop.run_in_executor`), for callers that must not block; never shut down."""
    return _EXECUTOR


def on_compute_thread(function: Callable[..., T], *args) -> T:
    """`function(*args)` on the compute thread (directly when already there, so calls may nest)."""
    if getattr(_LOCAL, "inside", False):
        return function(*args)
    return _EXECUTOR.submit(function, *args).result()
