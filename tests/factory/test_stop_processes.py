"""`factory.services.stop_processes` stops a child and everything it started, even what left its process group, and
SIGKILLs what ignores SIGTERM: after the grace period, or at once when a further signal comes while it waits."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from factory.services import stop_processes
from tests.fixtures.processes import kill_processes, process_tree, still_running

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")

# A child deaf to SIGTERM that starts a grandchild in a session of its own (as a Prefect worker starts flow runs),
# deaf too (SIG_IGN is inherited), then says so.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print("ready", flush=True)
time.sleep(120)
"""


def start_stubborn() -> tuple[subprocess.Popen, dict[tuple[int, str], str]]:
    """The child, and the child with its grandchild as (pid, start time) -> command line."""
    child = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True)
    assert child.stdout.readline() == b"ready\n"
    grandchildren = process_tree(child.pid)
    assert len(grandchildren) == 1, grandchildren
    itself = {key: command for key, command in process_tree(os.getpid()).items() if key[0] == child.pid}
    return child, {**itself, **grandchildren}


@pytest.mark.timeout(60)
def test_what_ignores_sigterm_is_killed_after_the_grace_grandchildren_included():
    child, ours = start_stubborn()
    try:
        began = time.monotonic()
        stop_processes([child], grace_s=1)
        took = time.monotonic() - began
        assert child.returncode == -signal.SIGKILL and not still_running(ours), still_running(ours)
        assert 1 <= took < 10, took
    finally:
        kill_processes(ours)
        child.kill()
        child.wait()


@pytest.mark.timeout(60)
def test_a_further_signal_while_stopping_kills_at_once_and_the_handlers_come_back():
    child, ours = start_stubborn()
    received = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append("ours"))
    try:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        began = time.monotonic()
        stop_processes([child], grace_s=60)
        took = time.monotonic() - began
        assert child.returncode == -signal.SIGKILL and not still_running(ours), still_running(ours)
        assert took < 10 and received == [], (took, received)  # the signal hurried the stop; it was not ours
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received == ["ours"]  # our handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
        kill_processes(ours)
        child.kill()
        child.wait()
