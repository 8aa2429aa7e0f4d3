"""The server config contract: server.yaml < environment < flags, errors naming file:line:field (or the variable or
flag), a JSON Schema, and `factory serve --print-config` showing each value's origin with secrets masked."""
from __future__ import annotations

import json

import pytest

from factory.cli import main
from factory.server_config import ServerConfigError, env_name, json_schema, leaf_fields, load_server_config

CONFIG = """\
port: 9000
workers: 2
models:
  memory_mb: 4096
  default: smollm2-135m-instruct
limits: {store: redis, url: "redis://:hunter2@127.0.0.1:6379/0"}
cors: {origins: ["http://localhost:5173"]}
logs: {file: logs/server.jsonl, rotate_mb: 1, keep: 3}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(CONFIG)
    return path


def test_layers_override_in_order_and_each_value_knows_its_origin(config_file, tmp_path):
    environ = {"FACTORY_ROOT": str(tmp_path / "root"), "FACTORY_SERVE_WORKERS": "3",
               "FACTORY_SERVE_CORS_ORIGINS": "http://a.test, http://b.test"}
    effective = load_server_config(config_file, environ=environ, flags={"port": 9100})
    config = effective.config
    assert (config.port, config.workers, config.models.memory_mb) == (9100, 3, 4096)
    assert config.cors.origins == ["http://a.test", "http://b.test"]
    assert config.logs.file == tmp_path / "logs" / "server.jsonl"  # relative to the file's folder
    assert config.registry_root == tmp_path / "root" / "registry"
    assert effective.origins["port"] == "flag --port"
    assert effective.origins["workers"] == "env FACTORY_SERVE_WORKERS"
    assert effective.origins["models.memory_mb"] == f"{config_file}:4"
    assert "models.queue_size" not in effective.origins  # a default


def test_the_config_file_is_found_from_the_environment(config_file):
    assert load_server_config(environ={"FACTORY_SERVE_CONFIG": str(config_file)}).config.port == 9000


def test_file_errors_name_file_line_and_field_with_a_hint(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("port: 8080\nmodels:\n  memory_mb: -1\n  defualt: x\nlimits: {store: redis}\n")
    with pytest.raises(ServerConfigError) as raised:
        load_server_config(path, environ={})
    assert raised.value.lines() == [
        f"{path}:3: models.memory_mb: input should be greater than 0",
        f"{path}:4: models.defualt: unknown key (did you mean 'default'?)",
        f"{path}:5: limits: store: redis needs url: redis://host:port/db",
    ]


def test_environment_and_flag_errors_name_the_variable_or_flag(tmp_path):
    with pytest.raises(ServerConfigError) as raised:
        load_server_config(environ={"FACTORY_SERVE_PORT": "eighty"})
    assert raised.value.lines() == ["port: input should be a valid integer, unable to parse string as an integer "
                                    "(from env FACTORY_SERVE_PORT)"]
    with pytest.raises(ServerConfigError, match=r"workers: .* \(from flag --workers\)"):
        load_server_config(environ={}, flags={"workers": 0})


def test_an_unknown_environment_variable_is_an_error_not_ignored():
    with pytest.raises(ServerConfigError) as raised:
        load_server_config(environ={"FACTORY_SERVE_BIND": "127.0.0.1:9000", "FACTORY_SERVE_MODELS_MEMORYMB": "1"})
    assert raised.value.lines() == [
        "FACTORY_SERVE_BIND: unknown setting (factory serve --print-config lists the settings)",
        "FACTORY_SERVE_MODELS_MEMORYMB: unknown setting (did you mean FACTORY_SERVE_MODELS_MEMORY_MB?)"]


def test_every_setting_has_one_environment_variable_and_a_schema_entry():
    names = [env_name(field) for field in leaf_fields()]
    assert len(names) == len(set(names))
    assert env_name("models.memory_mb") == "FACTORY_SERVE_MODELS_MEMORY_MB"
    assert env_name("registry") == "FACTORY_REGISTRY"
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {field.split(".")[0] for field in leaf_fields()}


def test_print_config_shows_values_and_origins_and_masks_secrets(config_file, capsys, monkeypatch):
    monkeypatch.setenv("FACTORY_SERVE_WORKERS", "3")
    assert main(["serve", "--config", str(config_file), "--port", "9100", "--print-config"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["port"] == ["9100", "flag", "--port"]
    assert rows["workers"] == ["3", "env", "FACTORY_SERVE_WORKERS"]
    assert rows["models.memory_mb"] == ["4096.0", f"{config_file}:4"]
    assert rows["models.queue_size"] == ["64", "default"]
    assert "hunter2" not in out and "redis://:***@127.0.0.1:6379/0" in out


def test_serve_refuses_a_bad_config_before_starting_anything(tmp_path, capsys):
    path = tmp_path / "server.yaml"
    path.write_text("port: 8080\nport: 9090\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"{path}:2: duplicate key 'port'"


def test_print_schema_is_the_json_schema(capsys):
    assert main(["serve", "--print-schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "llm-factory server config"
