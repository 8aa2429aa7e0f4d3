"""ASGI entry point for gunicorn: `gunicorn -c serving/gunicorn_conf.py serving.asgi:app`."""
from serving.app import create_app
from serving.logs import configure_logging

configure_logging()
app = create_app()
