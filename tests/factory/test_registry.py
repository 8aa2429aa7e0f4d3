"""The registry contract: immutable versions, aliases, atomic publish, verification."""
import threading

import pytest

from factory.registry import NotFound, Registry, RegistryError


@pytest.fixture
def artifact(tmp_path):
    root = tmp_path / "artifact"
    (root / "nested").mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (root / "config.json").write_text('{"a": 1}')
    (root / "nested" / "tokenizer.json").write_text("{}")
    return root


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "registry")


def test_publish_copies_files_and_records_a_manifest(registry, artifact):
    version = registry.publish("m", {"mlx-float16": artifact}, spec_hash="abc", source_revision="r1",
                               flow_run_id="run-1", report={"passed": True}, lineage={"base": "x@1"})
    assert version.ref == "m@1" and version.aliases == ["latest"] and version.formats == ["mlx-float16"]
    manifest = version.manifest()
    files = manifest["artifacts"]["mlx-float16"]["files"]
    assert set(files) == {"weights.bin", "config.json", "nested/tokenizer.json"}
    assert files["weights.bin"]["size"] == 256 * 64
    assert (manifest["spec_hash"], manifest["source_revision"], manifest["flow_run_id"]) == ("abc", "r1", "run-1")
    assert manifest["report"] == {"passed": True} and manifest["lineage"] == {"base": "x@1"}
    assert (version.artifact("mlx-float16") / "nested" / "tokenizer.json").read_text() == "{}"
    # the version is a copy: changing the source afterwards changes nothing
    (artifact / "config.json").write_text("changed")
    assert registry.verify("m@1") == []


def test_a_single_file_artifact_keeps_its_name(registry, artifact):
    version = registry.publish("m", {"gguf-q4_0": artifact / "weights.bin"})
    assert (version.artifact("gguf-q4_0") / "weights.bin").stat().st_size == 256 * 64


def test_versions_count_up_and_latest_follows(registry, artifact):
    for _ in range(3):
        registry.publish("m", {"mlx-float16": artifact})
    registry.publish("other", {"mlx-float16": artifact})
    assert [v.ref for v in registry.list()] == ["m@1", "m@2", "m@3", "other@1"]
    assert registry.resolve("m").version == 3 and registry.resolve("m@latest").version == 3
    assert registry.resolve("m@2").version == 2
    assert registry.names() == ["m", "other"]


def test_promote_and_rollback_move_an_alias_through_its_history(registry, artifact):
    for _ in range(3):
        registry.publish("m", {"mlx-float16": artifact})
    registry.promote("m@1", "prod")
    registry.promote("m@3", "prod")
    assert registry.resolve("m@prod").version == 3
    assert registry.rollback("m", "prod").version == 1
    assert registry.resolve("m@prod").version == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("m", "prod")
    assert registry.aliases("m") == {"latest": 3, "prod": 1}


def test_publish_can_move_extra_aliases(registry, artifact):
    version = registry.publish("m", {"mlx-float16": artifact}, aliases=["default"])
    assert version.aliases == ["default", "latest"]


def test_generation_changes_on_every_write(registry, artifact):
    seen = [registry.generation()]
    registry.publish("m", {"mlx-float16": artifact})
    seen.append(registry.generation())
    registry.promote("m@1", "prod")
    seen.append(registry.generation())
    assert seen == sorted(set(seen))


@pytest.mark.parametrize("ref, message", [("nope", "no model named 'nope'"), ("m@9", "m@9 does not exist"),
                                          ("m@staging", "m@staging does not exist")])
def test_unknown_refs_raise_not_found(registry, artifact, ref, message):
    registry.publish("m", {"mlx-float16": artifact})
    with pytest.raises(NotFound, match=message):
        registry.resolve(ref)


@pytest.mark.parametrize("name, artifacts, message", [
    ("Bad Name", {"mlx": None}, "model name"),
    ("m", {"../escape": None}, "format key"),
    ("m", {}, "at least one artifact"),
])
def test_bad_publish_requests_are_refused_and_leave_nothing(registry, artifact, name, artifacts, message):
    artifacts = {key: artifact for key in artifacts}
    with pytest.raises(RegistryError, match=message):
        registry.publish(name, artifacts)
    assert registry.list() == [] and not any(registry.store.staging.iterdir())


def test_missing_artifact_is_refused(registry, tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        registry.publish("m", {"mlx-float16": tmp_path / "absent"})


def test_promote_refuses_latest_and_numeric_aliases(registry, artifact):
    registry.publish("m", {"mlx-float16": artifact})
    with pytest.raises(RegistryError, match="latest"):
        registry.promote("m@1", "latest")
    with pytest.raises(RegistryError, match="number"):
        registry.promote("m@1", "7")


def test_verify_catches_a_flipped_byte_a_missing_file_an_extra_file_and_a_tampered_manifest(registry, artifact):
    versions = [registry.publish("m", {"mlx-float16": artifact}) for _ in range(4)]
    weights = versions[0].path / "mlx-float16" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))
    (versions[1].path / "mlx-float16" / "config.json").unlink()
    (versions[2].path / "mlx-float16" / "stray.txt").write_text("?")
    manifest = versions[3].path / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"flow_run_id": null', '"flow_run_id": "forged"'))
    assert registry.verify("m@1") == ["m@1: mlx-float16/weights.bin does not match its sha256"]
    assert registry.verify("m@2") == ["m@2: mlx-float16/config.json is missing"]
    assert registry.verify("m@3") == ["m@3: unexpected file mlx-float16/stray.txt"]
    assert registry.verify("m@4") == ["m@4: manifest.json was modified after publish"]


def test_concurrent_publishers_get_distinct_versions_and_readers_see_only_whole_ones(tmp_path, artifact):
    root = tmp_path / "registry"
    Registry(root)
    errors: list[str] = []
    done = threading.Event()

    def publish():
        registry = Registry(root)
        for _ in range(5):
            registry.publish("m", {"mlx-float16": artifact})

    def read():
        registry = Registry(root)
        while not done.is_set():
            for version in registry.list():
                errors.extend(registry.verify(version.ref))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=publish) for _ in range(3)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert errors == []
    assert [v.version for v in Registry(root).list()] == list(range(1, 16))


def test_leftovers_of_a_dead_publisher_are_swept_on_open(tmp_path, artifact):
    registry = Registry(tmp_path / "registry")
    registry.publish("m", {"mlx-float16": artifact})
    (registry.store.staging / "publish-dead").mkdir()
    (registry.store.staging / "publish-dead" / "half.bin").write_bytes(b"x")
    orphan = registry.store.path("m", 2)
    orphan.mkdir()
    (orphan / "manifest.json").write_text("{}")
    reopened = Registry(tmp_path / "registry")
    assert not any(reopened.store.staging.iterdir()) and not orphan.exists()
    assert reopened.publish("m", {"mlx-float16": artifact}).version == 2
    assert reopened.verify("m@2") == []
