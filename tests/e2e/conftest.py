"""Fixtures for end-to-end tests: a lab per test, and a control plane in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.e2e import harness
from zlh_actors import service
from zlh_actors.lab import replicas, world


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[world.Lab]:
    async with world.Lab(tmp_path / "lab", time_scale=0.02, warmup=0.3, subnet=harness.subnet()) as running:
        yield running


@pytest.fixture
async def control(lab: world.Lab, db_url: str, pool: asyncpg.Pool) -> AsyncIterator[harness.Control]:
    """One replica in this process."""
    made = await replicas.prepare_database(lab, db_url)
    settings = harness.settings_for(lab, db_url)
    async with service.running(settings, db_url):
        client = harness.Control([f"http://127.0.0.1:{settings.port}"], made, lab, pool)
        try:
            yield client
        finally:
            await client.close()
