"""The key store (factory/keys.py) and `factory keys create/ls/revoke`: secrets shown once and stored only hashed,
scopes and limits kept, revocation, refusals."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory.cli import main
from factory.keys import SECRET_PREFIX, KeyStore, KeyStoreError


def stored_bytes(root: Path) -> bytes:
    """Everything SQLite has written for the store: the database, its write-ahead log and shared memory."""
    return b"".join(path.read_bytes() for path in root.glob("keys.db*"))


def test_a_key_is_stored_only_as_its_hash(tmp_path):
    store = KeyStore(tmp_path)
    secret = store.create("ci", "inference", rpm=60, tpm=1000)
    assert secret.startswith(SECRET_PREFIX) and len(secret) >= len(SECRET_PREFIX) + 43  # 32 random bytes
    on_disk = stored_bytes(tmp_path)
    assert secret.encode() not in on_disk and secret[len(SECRET_PREFIX):].encode() not in on_disk
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in on_disk
    key = store.find(secret)
    assert (key.name, key.scope, key.rpm, key.tpm, key.revoked) == ("ci", "inference", 60, 1000, None)
    assert key.prefix == secret[:len(SECRET_PREFIX) + 4]


def test_find_knows_only_the_exact_secret(tmp_path):
    store = KeyStore(tmp_path)
    secret = store.create("a", "admin")
    assert store.find(secret[:-1]) is None and store.find(secret + "x") is None and store.find("") is None
    assert store.create("b", "admin") != secret  # random, not derived from the name


def test_revoked_keys_are_refused_but_still_count(tmp_path):
    store = KeyStore(tmp_path)
    assert not store.any()
    secret = store.create("ci", "fine-tune")
    assert store.revoke("ci").revoked is not None
    assert store.find(secret) is None
    assert store.any()  # revoking the last key must not open the server again
    with pytest.raises(KeyStoreError, match="no active key named 'ci'"):
        store.revoke("ci")
    # the name may be used again; the old secret stays dead
    fresh = store.create("ci", "inference")
    assert store.find(secret) is None and store.find(fresh).scope == "inference"


def test_a_second_process_sees_a_revocation_at_once(tmp_path):
    """The server keeps its connection open for every request: a revocation by the CLI is seen by the next read."""
    server_side, cli_side = KeyStore(tmp_path), KeyStore(tmp_path)
    secret = cli_side.create("ci", "inference")
    assert server_side.find(secret) is not None
    cli_side.revoke("ci")
    assert server_side.find(secret) is None


@pytest.mark.parametrize("name, scope, limits, message", [
    ("has space", "inference", {}, "key name"),
    ("", "inference", {}, "key name"),
    ("x" * 65, "inference", {}, "key name"),
    ("ok", "root", {}, "scope 'root'"),
    ("ok", "inference", {"rpm": 0}, "--rpm must be at least 1"),
    ("ok", "inference", {"tpm": -5}, "--tpm must be at least 1"),
])
def test_bad_keys_are_refused(tmp_path, name, scope, limits, message):
    with pytest.raises(KeyStoreError, match=message):
        KeyStore(tmp_path).create(name, scope, **limits)


def test_an_active_name_cannot_be_taken_twice(tmp_path):
    store = KeyStore(tmp_path)
    store.create("ci", "inference")
    with pytest.raises(KeyStoreError, match="exists"):
        store.create("ci", "admin")
    assert [key.scope for key in store.list()] == ["inference"]


def test_scopes():
    from factory.keys import Key

    def key(scope: str) -> Key:
        return Key("k", "sk-fac-abcd", scope, None, None, 0.0)

    assert key("admin").allows("inference") and key("admin").allows("fine-tune") and key("admin").allows("admin")
    assert key("inference").allows("inference") and not key("inference").allows("fine-tune")
    assert key("fine-tune").allows("fine-tune") and not key("fine-tune").allows("inference")
    assert not key("inference").allows("admin") and not key("fine-tune").allows("admin")


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli(factory_root, capsys):
    """`factory ...` in this process (FACTORY_ROOT is the test's): (exit status, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err
    return run


def test_create_prints_the_secret_once_and_ls_never(cli, factory_root):
    status, out, err = cli("keys", "create", "ci", "--scope", "inference", "--rpm", "3", "--tpm", "100")
    secret = out.strip()
    assert status == 0 and secret.startswith(SECRET_PREFIX) and out == secret + "\n"
    assert "ci (inference, 3 rpm, 100 tpm)" in err and secret not in err
    assert KeyStore(factory_root).find(secret).name == "ci"  # under FACTORY_ROOT, as the server reads it

    status, out, _ = cli("keys", "ls")
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["NAME", "PREFIX", "SCOPE", "RPM", "TPM", "CREATED", "STATUS"]
    assert lines[1].split()[:5] == ["ci", secret[:11] + "…", "inference", "3", "100"]
    assert lines[1].endswith("active")
    assert secret not in out and secret[11:15] not in out  # the prefix, and not one character more


def test_revoke_and_its_refusals(cli, factory_root):
    secret = cli("keys", "create", "ops", "--scope", "admin")[1].strip()
    assert cli("keys", "revoke", "ops") == (0, "revoked ops\n", "")
    assert KeyStore(factory_root).find(secret) is None
    assert "revoked 20" in cli("keys", "ls")[1].splitlines()[1]  # revoked <date>
    status, _, err = cli("keys", "revoke", "ops")
    assert status == 1 and "no active key named 'ops'" in err
    status, _, err = cli("keys", "create", "bad name", "--scope", "admin")
    assert status == 1 and "key name" in err
    with pytest.raises(SystemExit):  # argparse: an unknown scope is a usage error
        main(["keys", "create", "x", "--scope", "everything"])


def test_the_console_script_writes_under_factory_root(tmp_path):
    """The installed `factory` command, as a person runs it: FACTORY_ROOT decides where keys live."""
    env = {**os.environ, "FACTORY_ROOT": str(tmp_path / "root")}
    command = [str(Path(sys.executable).with_name("factory")), "keys"]
    created = subprocess.run([*command, "create", "web", "--scope", "fine-tune"], env=env, capture_output=True,
                             text=True)
    assert created.returncode == 0, created.stderr
    assert KeyStore(tmp_path / "root").find(created.stdout.strip()).scope == "fine-tune"
    listed = subprocess.run([*command, "ls"], env=env, capture_output=True, text=True)
    assert "web" in listed.stdout and created.stdout.strip() not in listed.stdout
