"""Fixtures: a fresh fake PVE cluster per test (see `fakecluster`) and a driver connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from fakepve import certs

from tests.integration.proxmox import fakecluster
from zlh_actors.proxmox import driver


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The fake's self-signed certificate (also the CA the driver verifies against) and its key."""
    certfile, keyfile, _ = certs.make_cert(
        str(tmp_path_factory.mktemp("fakepve-pki")), hosts=(fakecluster.HOST,)
    )
    return certfile, keyfile


@pytest.fixture
def cluster(pki: tuple[str, str]) -> Iterator[fakecluster.FakeCluster]:
    fake = fakecluster.FakeCluster(*pki)
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
async def pve(cluster: fakecluster.FakeCluster) -> AsyncIterator[driver.ProxmoxerDriver]:
    """The driver under test, connected to `cluster` with the test settings."""
    proxmox = driver.ProxmoxerDriver(cluster.settings())
    try:
        yield proxmox
    finally:
        await proxmox.close()
