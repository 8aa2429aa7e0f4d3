"""`factory up` stopped by SIGTERM (a service manager, a container runtime, `kill`) or by SIGINT (Ctrl-C, which a
terminal sends to its whole foreground process group) stops every process it started and frees both ports.

The SIGTERM case starts `up` as a shell script's background job (`factory up &`) is started: with SIGINT ignored,
which its children inherit. Prefect's worker stops on SIGTERM by sending itself SIGINT, so started that way it did
not stop at all, and `up` waited 30 s for it before stopping the Prefect server.

`up` runs for real in a child process, through `factory.cli.main`: its Prefect server, Prefect worker and gunicorn
are the real ones. Only the build and `prefect deploy` are replaced (stopping does not depend on them, and they would
cost minutes), so it serves within seconds. Linux only: the process tree is read from /proc.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from factory.services import free_port
from tests.fixtures.processes import kill_processes, process_tree, still_running

ROOT = Path(__file__).resolve().parents[2]
UP = """
import signal, sys
if sys.argv[1] == "--as-background-job":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a non-interactive shell does to `factory up &`
from flows import commands
commands.build_one_row = lambda spec, specs_dir: {"spec": spec, "status": "up to date", "version": "(not built)"}
commands.deploy = lambda: 0
from factory.cli import main
sys.exit(main(sys.argv[2:]))
"""
# `up` gives the worker and gunicorn factory.services.STOP_GRACE_S (4 s), then the Prefect server as long; the rest
# is room for a loaded machine. A service manager or container runtime typically SIGKILLs after 10 s.
STOPPED_WITHIN_S = 20

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def port_free(port: int) -> bool:
    """Whether a server could listen on the port now (as a restarted `factory up` would)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.timeout(150)
@pytest.mark.parametrize("started_as, signum, to_group",
                         [("--as-background-job", signal.SIGTERM, False), ("--in-a-terminal", signal.SIGINT, True)],
                         ids=["SIGTERM-to-up-started-in-the-background", "SIGINT-to-its-process-group"])
def test_stopping_up_stops_the_prefect_server_worker_and_gunicorn(tmp_path, started_as, signum, to_group):
    prefect_port, serve_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}  # `up` starts its own
    env.pop("FACTORY_REGISTRY", None)
    env.update(FACTORY_ROOT=str(tmp_path / "factory"), FACTORY_PREFECT_PORT=str(prefect_port),
               FACTORY_OPENBLAS="0")  # no re-exec with OpenBLAS preloaded: it would drop the replacements above
    log = tmp_path / "up.log"
    # A job started in the background of a non-interactive shell (CI, nohup ... &) inherits SIGINT ignored, and
    # Python keeps an ignored SIGINT ignored; a terminal's foreground job has it at its default: start `up` so.
    up = subprocess.Popen([sys.executable, "-c", UP, started_as, "up", "--port", str(serve_port)], cwd=ROOT, env=env,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                          stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    started: dict[tuple[int, str], str] = {}
    try:
        worker_log = tmp_path / "factory" / "prefect" / "worker.log"
        deadline = time.monotonic() + 90
        while not (answers(f"http://127.0.0.1:{prefect_port}/api/health")
                   and answers(f"http://127.0.0.1:{serve_port}/health")
                   and worker_log.exists() and "started!" in worker_log.read_text()):  # polling its work pool
            assert up.poll() is None and time.monotonic() < deadline, "`up` did not start:\n" + log.read_text()
            time.sleep(0.3)
        started = process_tree(up.pid)
        commands = "\n".join(started.values())
        for expected in ("prefect server start", "prefect worker start", "gunicorn"):
            assert expected in commands, commands

        (os.killpg if to_group else os.kill)(up.pid, signum)
        began = time.monotonic()
        try:
            up.wait(timeout=STOPPED_WITHIN_S)
        except subprocess.TimeoutExpired:
            pass
        while still_running(started) and time.monotonic() - began < STOPPED_WITHIN_S:
            time.sleep(0.1)
        took = time.monotonic() - began
        left = "\n".join(still_running(started).values())
        assert up.poll() is not None and not left, f"{took:.1f}s after {signum.name}, still running:\n{left}"
        assert port_free(prefect_port), f"the Prefect server's port is still held {took:.1f}s after {signum.name}"
        assert port_free(serve_port), f"the serving port is still held {took:.1f}s after {signum.name}"
    finally:
        kill_processes({**started, **process_tree(up.pid)})
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        up.wait()
