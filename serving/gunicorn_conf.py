"""gunicorn settings for the server: uvicorn workers (uvloop + httptools); bind, worker count and log level from the
server config (factory.server_config: server.yaml, FACTORY_SERVE_* variables, flags passed on as variables).

Metrics are added up across workers (prometheus_client's multiprocess mode): this file runs in the master before any
worker exists, so it sets PROMETHEUS_MULTIPROC_DIR before a worker imports prometheus_client. The directory is made
fresh for each server run (files left by an earlier run would add their old counts) under the system's temporary
folder (TMPDIR chooses it), and removed when the master exits. A worker that exits takes its gauges with it
(`child_exit`); its counts stay.
"""
import atexit
import os
import shutil
import tempfile

from factory.server_config import load_server_config

_config = load_server_config().config
bind = f"{_config.host}:{_config.port}"
workers = _config.workers
worker_class = "uvicorn_worker.UvicornWorker"
# Generation runs on engine threads, not the event loop, so workers keep answering gunicorn's heartbeat; a long
# timeout only matters for a worker that is really stuck.
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = None  # the app writes one JSON line per request itself
errorlog = "-"
loglevel = _config.logs.level
# gunicorn 25+ opens a control socket at one fixed path per user ($HOME/.gunicorn/gunicorn.ctl): every server on the
# machine (several in the test suite, `factory serve` beside `make up`) would take it over from the others.
control_socket_disable = True

METRICS_DIR, METRICS_OWNER = "PROMETHEUS_MULTIPROC_DIR", "FACTORY_METRICS_DIR_OWNER"


def _metrics_dir() -> str:
    """This master's metrics directory: made now, or kept when gunicorn reloads this file (SIGHUP) in the same
    master. One inherited from elsewhere (a parent server, an old run) is never reused."""
    if os.environ.get(METRICS_OWNER) == str(os.getpid()) and os.path.isdir(os.environ.get(METRICS_DIR, "")):
        return os.environ[METRICS_DIR]
    path = tempfile.mkdtemp(prefix="factory-metrics-")
    os.environ[METRICS_DIR], os.environ[METRICS_OWNER] = path, str(os.getpid())
    atexit.register(_remove_metrics_dir, path, os.getpid())  # also when the master fails before it serves
    return path


def _remove_metrics_dir(path: str, master_pid: int) -> None:
    if os.getpid() == master_pid:  # workers inherit atexit handlers by forking, and must leave it alone
        shutil.rmtree(path, ignore_errors=True)


_metrics_path = _metrics_dir()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_path)


def on_exit(server):
    _remove_metrics_dir(_metrics_path, os.getpid())
