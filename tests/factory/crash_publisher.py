"""Publishes versions in a loop until killed; the registry crash test SIGKILLs it at random moments.

    python -m tests.factory.crash_publisher REGISTRY_ROOT ARTIFACT_DIR
"""
import sys
from pathlib import Path

from factory.registry import Registry

registry = Registry(sys.argv[1])
artifact = Path(sys.argv[2])
print("ready", flush=True)
while True:
    version = registry.publish("crashy", {"mlx-float16": artifact, "gguf-q4_0": artifact / "weights.bin"},
                               spec_hash="s", flow_run_id="crash-test")
    if version.version % 3 == 0:
        registry.promote(version.ref, "prod")
