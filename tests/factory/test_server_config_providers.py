"""The server config's `providers:` and `cache:` sections: what a provider must say, errors naming file:line:field,
the environment's JSON form, and `--print-config` naming each key's variable, never the key."""
from __future__ import annotations

import pytest

from factory.cli import main
from factory.server_config import ServerConfigError, load_server_config

CONFIG = """\
providers:
  - name: ollama
    base_urls: ["http://127.0.0.1:11434/v1/", "http://10.0.0.2:11434/v1"]
    discover: true
  - name: openai
    base_urls: [https://api.openai.com/v1]
    api_key_env: OPENAI_API_KEY
    models: [gpt-4o-mini]
    timeout_s: 30
    max_concurrency: 4
cache: {enabled: true, ttl_s: 60}
"""


def load(tmp_path, text: str, **kwargs):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return load_server_config(path, environ=kwargs.pop("environ", {}), **kwargs)


def test_providers_and_cache_load_with_defaults(tmp_path):
    config = load(tmp_path, CONFIG).config
    ollama, openai = config.providers
    assert ollama.base_urls == ["http://127.0.0.1:11434/v1", "http://10.0.0.2:11434/v1"]  # no trailing slash
    assert (ollama.discover, ollama.models, ollama.api_key_env, ollama.check_interval_s) == (True, [], None, 10)
    assert (openai.api_key_env, openai.timeout_s, openai.max_concurrency, openai.retries) == \
        ("OPENAI_API_KEY", 30, 4, 2)
    assert (config.cache.enabled, config.cache.ttl_s, config.cache.max_entries) == (True, 60, 1024)
    assert load_server_config(environ={}).config.cache.enabled is False  # off unless asked for
    assert load_server_config(environ={}).config.providers == []


@pytest.mark.parametrize(("text", "line"), [
    ("providers:\n  - name: x\n    base_urls: [http://h/v1]\n    discover: true\n    api_key: sk-1\n",
     "server.yaml:5: providers[0].api_key: unknown key (did you mean 'api_key_env'?)"),
    ("providers:\n  - name: x\n    base_urls: [http://h/v1]\n",
     "server.yaml:2: providers[0]: list its models, or set discover: true"),
    ("providers:\n  - name: x\n    base_urls: ['http://me:pw@h/v1']\n    discover: true\n",
     "server.yaml:3: providers[0].base_urls: 'http://me:***@h/v1': no credentials in URLs; name a variable in "
     "api_key_env"),
    ("providers:\n  - name: x\n    base_urls: [ftp://h]\n    discover: true\n",
     "server.yaml:3: providers[0].base_urls: 'ftp://h': a base URL is http(s)://host[:port]/path"),
    ("providers:\n  - name: a/b\n    base_urls: [http://h/v1]\n    discover: true\n",
     "server.yaml:2: providers[0].name: 'a/b' does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
    ("providers:\n  - {name: x, base_urls: [http://h/v1], discover: true}\n"
     "  - {name: x, base_urls: [http://g/v1], discover: true}\n",
     "server.yaml:1: providers: provider names must be unique: x"),
    ("providers:\n  - {name: x, base_urls: [], discover: true}\n",
     "server.yaml:2: providers[0].base_urls: list should have at least 1 item after validation, not 0"),
    ("providers:\n  - {name: x, base_urls: [http://h/v1], discover: true, api_key_env: 'MY-KEY'}\n",
     "server.yaml:2: providers[0].api_key_env: 'MY-KEY' does not match ^[A-Za-z_][A-Za-z0-9_]*$"),
    ("cache: {enabled: true, size: 3}\n", "server.yaml:1: cache.size: unknown key (allowed: enabled, ttl_s, "
                                          "max_entries, max_mb)"),
])
def test_mistakes_name_file_line_and_field(tmp_path, text, line):
    with pytest.raises(ServerConfigError) as raised:
        load(tmp_path, text)
    assert [problem.replace(str(tmp_path) + "/", "") for problem in raised.value.lines()] == [line]


def test_the_environment_takes_providers_as_json(tmp_path):
    environ = {"FACTORY_SERVE_PROVIDERS": '[{"name": "llama", "base_urls": ["http://127.0.0.1:8081/v1"], '
                                          '"models": ["smollm2"]}]', "FACTORY_SERVE_CACHE_ENABLED": "true"}
    effective = load_server_config(environ=environ)
    assert [p.name for p in effective.config.providers] == ["llama"] and effective.config.cache.enabled
    assert effective.origins["providers"] == "env FACTORY_SERVE_PROVIDERS"
    with pytest.raises(ServerConfigError, match=r"providers: .*\(from env FACTORY_SERVE_PROVIDERS\)"):
        load_server_config(environ={"FACTORY_SERVE_PROVIDERS": "[{name: x"})


def test_print_config_names_the_key_variable_never_the_key(tmp_path, capsys, monkeypatch):
    path = tmp_path / "server.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value")
    assert main(["serve", "--config", str(path), "--print-config"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert '"api_key_env":"OPENAI_API_KEY"' in rows["providers"] and rows["providers"].endswith(f"{path}:1")
    assert rows["cache.enabled"].split()[1:] == ["True", f"{path}:11"]
    assert "sk-very-secret-value" not in out
