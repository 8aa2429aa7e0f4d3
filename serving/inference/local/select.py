"""Which engine serves a registry version on this host, and from which of its artifacts (an embedding model's:
`select_embedding_artifact`)."""
from __future__ import annotations

import platform

from factory.registry import Version
from serving.inference.local.engines.base import Engine

# On Linux/x86 the MLX CPU kernels for quantized weights are naive; float weights decode faster there.
MLX_PREFERENCE_CPU = ["mlx-float32", "mlx-float16", "mlx-bfloat16", "mlx-q8", "mlx-q6", "mlx-q5", "mlx-q4",
                      "mlx-mxfp4", "mlx-q3", "mlx-q2"]
MLX_PREFERENCE_APPLE = ["mlx-q4", "mlx-q8", "mlx-mxfp4", "mlx-float16", "mlx-bfloat16", "mlx-float32", "mlx-q6",
                        "mlx-q5", "mlx-q3", "mlx-q2"]


class NoEngine(Exception):
    """No engine on this host can serve any artifact of a version."""


def apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


GGUF_PREFERENCE = ["gguf-q4_0", "gguf-q4_k_m", "gguf-q8_0", "gguf-f16"]  # q4_0 is repacked for AVX-512 at load: fastest on x86


def select_artifact(version: Version, engine: str = "auto") -> tuple[type[Engine], str]:
    """The engine class and artifact (format key) to serve `version` with on this host.

    auto: MLX on Apple silicon; llama.cpp for a GGUF artifact elsewhere (when llama-cpp-python is installed), MLX
    otherwise. `serve.engine` in the spec forces one.
    """
    from serving.inference.local.engines.llamacpp import available as llamacpp_available

    gguf = [key for key in GGUF_PREFERENCE if key in version.formats]
    wants_llamacpp = engine == "llamacpp" or (engine == "auto" and not apple_silicon() and gguf)
    if wants_llamacpp:
        if not gguf:
            raise NoEngine(f"{version.ref}: serve.engine is llamacpp but it has no GGUF artifact")
        if llamacpp_available():
            from serving.inference.local.engines.llamacpp import LlamaCppEngine

            return LlamaCppEngine, gguf[0]
        if engine == "llamacpp":
            raise NoEngine(f"{version.ref}: serve.engine is llamacpp but llama-cpp-python is not installed")
    preference = MLX_PREFERENCE_APPLE if apple_silicon() else MLX_PREFERENCE_CPU
    for prefix in preference:
        for key in version.formats:
            if key == prefix or key.startswith(prefix + "-"):
                from serving.inference.local.engines.mlx import MlxEngine

                return MlxEngine, key
    raise NoEngine(f"{version.ref} has no artifact this server can run (formats: {', '.join(version.formats)})")


# Embedding models: llama.cpp's f16 was the fastest here (all-MiniLM-L6-v2: ~300 sentences/s; q8_0 ~250, MLX
# float32 ~100); on Apple silicon MLX runs them on the GPU.
EMBEDDING_PREFERENCE_CPU = ["gguf-f16", "gguf-q8_0", "mlx-float32", "mlx-float16", "mlx-bfloat16"]
EMBEDDING_PREFERENCE_APPLE = ["mlx-float16", "mlx-float32", "mlx-bfloat16", "gguf-f16", "gguf-q8_0"]


def select_embedding_artifact(version: Version, engine: str = "auto") -> tuple[str, str]:
    """(runtime name, artifact key) for an embedding model on this host; `serve.engine` forces a runtime."""
    from serving.inference.local.engines.llamacpp import available as llamacpp_available

    preference = EMBEDDING_PREFERENCE_APPLE if apple_silicon() else EMBEDDING_PREFERENCE_CPU
    for key in preference:
        runtime = "llamacpp" if key.startswith("gguf-") else "mlx"
        if key in version.formats and engine in ("auto", runtime) and (runtime == "mlx" or llamacpp_available()):
            return runtime, key
    raise NoEngine(f"{version.ref} has no embedding artifact this server can run with engine {engine} (formats: "
                   f"{', '.join(version.formats)})")
