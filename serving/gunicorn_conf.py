"""gunicorn settings for the server: uvicorn workers (uvloop + httptools); bind, worker count and log level from the
server config (factory.server_config: server.yaml, FACTORY_SERVE_* variables, flags passed on as variables)."""
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
