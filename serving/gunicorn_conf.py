"""gunicorn settings for the server: uvicorn workers (uvloop + httptools), bind and worker count from the environment.

    FACTORY_SERVE_BIND     default 127.0.0.1:8080
    FACTORY_SERVE_WORKERS  default 1 (each worker loads its own copy of the models it serves)
"""
import os

bind = os.environ.get("FACTORY_SERVE_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("FACTORY_SERVE_WORKERS", "1"))
worker_class = "uvicorn_worker.UvicornWorker"
# Generation runs on engine threads, not the event loop, so workers keep answering gunicorn's heartbeat; a long
# timeout only matters for a worker that is really stuck.
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = None  # the app writes one JSON line per request itself
errorlog = "-"
loglevel = os.environ.get("FACTORY_SERVE_LOG_LEVEL", "info")
# gunicorn 25+ opens a control socket at one fixed path per user ($HOME/.gunicorn/gunicorn.ctl): every server on the
# machine (several in the test suite, `factory serve` beside `make up`) would take it over from the others.
control_socket_disable = True
