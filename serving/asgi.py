"""ASGI entry point: the app gunicorn serves (the command line is `factory.services.SERVER_COMMAND`)."""
from factory.server_config import load_server_config
from serving.app import create_app
from serving.logs import configure_logging

config = load_server_config().config
configure_logging(config.logs)
app = create_app(config)
