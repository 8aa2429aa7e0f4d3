"""Local services the factory starts for itself: the Prefect server (SQLite, under the factory root).

Stdlib only: the server is a `prefect server start` child process, and readiness is one HTTP GET.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from factory.settings import Settings


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Prefect settings that keep its database, results and home under the factory root, offline."""
    return {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.prefect_home / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }


def apply_prefect_environment(settings: Settings) -> None:
    """Set the defaults above in this process (before Prefect is imported); explicit variables win."""
    for key, value in prefect_environment(settings).items():
        os.environ.setdefault(key, value)


OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")


def with_openblas(env: dict[str, str]) -> dict[str, str]:
    """`env` plus an LD_PRELOAD of OpenBLAS, when it is installed (`make blas`) and not switched off.

    The mlx-cpu wheel links a reference BLAS; preloading OpenBLAS makes MLX's float32 matrix products 14-48x faster
    on these x86 CPUs (quantized and float16 kernels do not use BLAS). FACTORY_OPENBLAS=0 turns it off.
    """
    if env.get("FACTORY_OPENBLAS") == "0" or not OPENBLAS.exists() or str(OPENBLAS) in env.get("LD_PRELOAD", ""):
        return env
    return {**env, "LD_PRELOAD": " ".join(filter(None, [env.get("LD_PRELOAD"), str(OPENBLAS)]))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrefectServer:
    process: subprocess.Popen
    api_url: str
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_prefect_server(settings: Settings, port: int | None = None, timeout: float = 90) -> PrefectServer:
    """Start `prefect server start` on 127.0.0.1 and wait until its API answers /health."""
    port = port or free_port()
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    log = settings.prefect_home / "server.log"
    env = {**os.environ, **prefect_environment(settings)}
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to another server
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
               "--no-ui", "--analytics-off"]
    process = subprocess.Popen(command, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return PrefectServer(process=process, api_url=api_url, log=log)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"prefect server did not become healthy within {timeout:.0f}s; see {log}")


PROJECT_DIR = Path(__file__).resolve().parents[1]
# The one way the server is started (by `factory serve`, `factory up`, the tests and the benchmarks), from PROJECT_DIR.
SERVER_COMMAND = [sys.executable, "-m", "gunicorn", "-c", "serving/gunicorn_conf.py", "serving.asgi:app"]


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    registry: Path | None = None
    memory_mb: float | None = None
    queue_size: int | None = None


def serve(options: ServeOptions) -> int:
    """Run the OpenAI-compatible server under gunicorn (uvicorn workers) in the foreground until interrupted."""
    env = {**os.environ, "FACTORY_SERVE_BIND": f"{options.host}:{options.port}",
           "FACTORY_SERVE_WORKERS": str(options.workers)}
    if options.registry is not None:
        env["FACTORY_REGISTRY"] = str(Path(options.registry).absolute())
    if options.memory_mb is not None:
        env["FACTORY_SERVE_MEMORY_MB"] = str(options.memory_mb)
    if options.queue_size is not None:
        env["FACTORY_SERVE_QUEUE_SIZE"] = str(options.queue_size)
    print(f"serving on http://{options.host}:{options.port}/v1", flush=True)
    process = subprocess.Popen(SERVER_COMMAND, cwd=PROJECT_DIR, env=with_openblas(env))
    try:
        return process.wait()
    except (KeyboardInterrupt, SystemExit):
        process.terminate()
        process.wait()
        raise
