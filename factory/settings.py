"""One root directory for everything the factory writes, overridable from the environment.

    FACTORY_ROOT           default ./.factory
    FACTORY_REGISTRY       default $FACTORY_ROOT/registry  (the registry's storage root)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    root: Path
    registry: Path

    @property
    def hub_cache(self) -> Path:
        return self.root / "hub-cache"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def implicit_specs(self) -> Path:
        """Specs that `factory serve PATH` writes for the model files it is given."""
        return self.root / "specs"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        root = Path(env.get("FACTORY_ROOT", ".factory")).absolute()
        registry = Path(env["FACTORY_REGISTRY"]).absolute() if env.get("FACTORY_REGISTRY") else root / "registry"
        return cls(root=root, registry=registry)
