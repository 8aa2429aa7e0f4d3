"""/v1/models metadata for a version with every artifact family; the engine is chosen from them per host."""
from __future__ import annotations

import time

from factory.spec import CoremlFormat
from formats.coreml.export import export_coreml
from serving.inference.local.select import apple_silicon
from tests.serving.conftest import SERVE


def test_a_version_lists_each_format_and_is_served_from_the_one_this_host_runs_best(fresh_server, tiny_model, tiny_mlx,
                                                                                    tiny_gguf, tmp_path):
    coreml = tmp_path / "coreml"
    export_coreml(tiny_model, coreml, CoremlFormat(compress="palettize4", context_length=64))
    fresh_server.registry.publish("tiny", {"mlx-float16": tiny_mlx, "gguf-f16": tiny_gguf,
                                           "coreml-float16-palettize4": coreml}, serve=SERVE)
    deadline = time.monotonic() + 10
    while (model := fresh_server.client.models.retrieve("tiny")).model_extra["version"] != 2:
        assert time.monotonic() < deadline, "the new version was not picked up"
        time.sleep(0.2)
    extra = model.model_extra
    assert extra["formats"] == ["coreml-float16-palettize4", "gguf-f16", "mlx-float16"]
    assert extra["quantization"] == {"coreml-float16-palettize4": "4-bit palettized, float16", "gguf-f16": "f16",
                                     "mlx-float16": "float16"}
    assert extra["engine"] == ("mlx" if apple_silicon() else "llamacpp")  # never Core ML: that package is for apps
    reply = fresh_server.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                        max_tokens=4)
    assert reply.system_fingerprint == "tiny@2"
