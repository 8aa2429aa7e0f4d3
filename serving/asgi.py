"""ASGI entry point: the app gunicorn serves (the command line is `factory.services.SERVER_COMMAND`)."""
from serving.app import create_app
from serving.logs import configure_logging

configure_logging()
app = create_app()
