"""Driver errors become the typed errors callers act on; a lost session is never an internal error."""

from __future__ import annotations

import asyncpg
import pytest

from storage import database
from zlh_actors import errors


@pytest.mark.parametrize(
    "raised",
    [
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        asyncpg.InterfaceError("connection is closed"),
        ConnectionResetError("Connection lost"),
        TimeoutError(),
    ],
)
def test_a_session_lost_mid_operation_is_storage_unavailable(raised: BaseException) -> None:
    assert isinstance(database.translate(raised), errors.StorageUnavailable)


async def test_acquire_translates_what_the_driver_raises_inside_it() -> None:
    class Pool:
        def acquire(self) -> Pool:
            return self

        async def __aenter__(self) -> object:
            return object()

        async def __aexit__(self, *exc: object) -> None:
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )

    with pytest.raises(errors.StorageUnavailable):
        async with database.acquire(Pool()):  # type: ignore[arg-type]
            pass
