"""The model pool's memory policy, on real MLX engines: load on first use, LRU under a byte budget, idle TTL."""
from __future__ import annotations

import asyncio
import time

import pytest

from factory.registry import Registry
from factory.server_config import ModelsConfig
from serving.inference.pool import ModelPool
from serving.inference.types import UnknownModel


@pytest.fixture
def registry(tmp_path, tiny_mlx, tiny_mlx_v2):
    registry = Registry(tmp_path / "registry")
    registry.publish("one", {"mlx-float16": tiny_mlx})
    registry.publish("two", {"mlx-float16": tiny_mlx_v2})
    return registry


def pool_for(registry, **settings) -> ModelPool:
    return ModelPool(registry, ModelsConfig(**settings))


def test_models_load_on_first_use_and_lru_keeps_the_budget(registry):
    size_mb = sum(f.stat().st_size for f in registry.resolve("one").artifact("mlx-float16").rglob("*")) / 1e6
    pool = pool_for(registry, memory_mb=size_mb * 1.5)  # room for one model, not two

    async def scenario():
        await pool.refresh()
        assert pool.loaded == {}
        async with pool.lease("one"):
            assert list(pool.loaded) == ["one@1"]
            async with pool.lease("two"):  # "one" is in use: over budget, but nothing in use is unloaded
                assert sorted(pool.loaded) == ["one@1", "two@1"]
        async with pool.lease("two"):
            pass
        pool.evict()
        assert list(pool.loaded) == ["two@1"]  # the least recently used went first
        async with pool.lease("one"):
            assert list(pool.loaded) == ["one@1"]
        pool.close()

    asyncio.run(scenario())


def test_idle_models_unload_after_their_ttl(registry):
    pool = pool_for(registry, idle_ttl_s=0.2)

    async def scenario():
        await pool.refresh()
        async with pool.lease("one"):
            pass
        pool.evict()
        assert list(pool.loaded) == ["one@1"]
        time.sleep(0.3)
        pool.evict()
        assert pool.loaded == {}

    asyncio.run(scenario())


def test_unknown_ids_are_refused(registry):
    pool = pool_for(registry)

    async def scenario():
        await pool.refresh()
        for model_id in ("three", "one@7", "one@prod"):
            with pytest.raises(UnknownModel):
                async with pool.lease(model_id):
                    pass

    asyncio.run(scenario())
