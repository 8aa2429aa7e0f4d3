"""A publisher SIGKILLed at random moments never leaves the registry inconsistent."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from factory.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 24


def test_sigkill_at_random_points_leaves_only_whole_versions(tmp_path):
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    rng = random.Random(1234)
    for index in range(3):  # big enough that copy + fsync take a while, so kills land mid-publish
        (artifact / f"shard-{index}.bin").write_bytes(rng.randbytes(1 << 20))
    (artifact / "weights.bin").write_bytes(rng.randbytes(300_000))
    root = tmp_path / "registry"
    Registry(root)
    leftovers_seen = 0
    for trial in range(TRIALS):
        publisher = subprocess.Popen([sys.executable, "-m", "tests.factory.crash_publisher", str(root), str(artifact)],
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert publisher.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.4))
        os.kill(publisher.pid, signal.SIGKILL)
        publisher.wait()
        leftovers_seen += _has_leftovers(root)

        registry = Registry(root)  # opening sweeps what the dead publisher left
        listed = registry.list()
        assert {(v.name, v.version) for v in listed} == registry.store.stored(), f"trial {trial}: orphan directories"
        assert not any(registry.store.staging.iterdir()), f"trial {trial}: staging not swept"
        for version in listed:
            assert registry.verify(version.ref) == [], f"trial {trial}"
        if listed:
            assert registry.resolve("crashy").version == max(v.version for v in listed)
            prod = registry.aliases("crashy").get("prod")
            assert prod is None or prod % 3 == 0
    assert len(Registry(root).list()) > 0, "the publisher never completed a version"
    assert leftovers_seen > 0, "no kill landed mid-publish; the test exercised nothing"


def _has_leftovers(root: Path) -> bool:
    """Did the kill leave a staging directory or an unrecorded version directory behind?"""
    if any((root / "staging").iterdir()):
        return True
    with sqlite3.connect(root / "index.sqlite") as db:
        known = {(name, str(version)) for name, version in db.execute("SELECT name, version FROM versions")}
    on_disk = {(p.parent.name, p.name) for p in (root / "versions").glob("*/*")}
    return bool(on_disk - known)
