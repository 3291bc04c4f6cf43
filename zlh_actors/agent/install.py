"""Install a manifest into the game directory: survey, plan, fetch with verification, mark applied.

The order of the steps is what makes the install safe to interrupt at any point:

1. The applied-manifest hash is removed first, so from here until step 5 the directory is "not
   installed" and the agent refuses to start the game.
2. The directory is surveyed (files that could be reused are hashed, in a worker thread because a
   mod can be tens of megabytes) and `plan.plan` decides what to fetch, keep and delete.
3. Unlisted jars and leftover partial downloads are deleted.
4. Each missing file is streamed to a temporary name next to its final one (`.<name>.<random>` +
   `PART_SUFFIX`) while its size and digest are computed; a size or digest that differs from the
   manifest fails the install with the file, expected and actual values named, and the temporary
   file is removed. Only a verified file is renamed (`os.replace`, atomic) to its final name, so a
   final name never holds unverified bytes, and a cancelled or crashed install leaves at most a
   partial file that the next plan deletes.
5. `server.properties` and `eula.txt` are written (also atomically) and the manifest hash is recorded.

Network errors and 5xx answers are retried a few times with backoff (`Transient`); a wrong file or a
4xx is not (`InstallFailed`, permanent for this manifest). Files are fetched one at a time, in the
plan's order, so the first failure named is the same on every agent.

Chunks are hashed and written on the event loop: a 64 KiB write to the page cache takes microseconds,
so the HTTP API stays responsive, while the slow calls (hashing whole files, fsync) go to threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp

from zlh_actors import errors
from zlh_actors.agent import manifest, plan, state

CHUNK_BYTES = 64 * 1024
ATTEMPTS = 3
RETRY_DELAY = 0.5
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)


class InstallFailed(errors.Permanent):
    """The manifest could not be installed as pinned.

    Attributes (in `details`): file (relative to the game directory); for wrong content also
    expected and actual (sizes or hex digests).
    """


class DownloadUnavailable(errors.Transient):
    """The file server could not be reached or answered with a retryable status."""


async def install(
    pinned: manifest.Manifest,
    manifest_sha256: str,
    game_dir: Path,
    store: state.StateDir,
    session: aiohttp.ClientSession,
    ip: str,
    progress: Callable[[str], None],
) -> plan.Plan:
    """Make `game_dir` match `pinned` and record `manifest_sha256` as applied; `InstallFailed` if not."""
    store.clear_applied()
    try:
        (game_dir / plan.MODS_DIR).mkdir(parents=True, exist_ok=True)
        wanted = plan.targets(pinned)
        present, on_disk = await asyncio.to_thread(survey, game_dir, wanted)
        work = plan.plan(wanted, present, on_disk)
        progress(work.summary())
        for path in work.delete:
            (game_dir / path).unlink(missing_ok=True)
        for index, target in enumerate(work.fetch, start=1):
            await fetch(session, target, game_dir)
            progress(f"fetched {target.path} ({index}/{len(work.fetch)})")
        properties = plan.render_properties(pinned, ip, manifest_sha256)
        await asyncio.to_thread(write_atomically, game_dir / plan.PROPERTIES, properties.encode("utf-8"))
        await asyncio.to_thread(write_atomically, game_dir / plan.EULA, plan.render_eula().encode("utf-8"))
    except OSError as exc:
        where = Path(exc.filename).name if exc.filename else str(game_dir)
        raise InstallFailed(f"{where}: {exc.strerror}", file=where) from None
    store.save_applied(manifest_sha256)
    return work


def survey(game_dir: Path, wanted: Iterable[plan.Target]) -> tuple[dict[str, str], list[str]]:
    """Digests of the target files present (see `plan.plan`), and the files that might be deleted."""
    present: dict[str, str] = {}
    for target in wanted:
        path = game_dir / target.path
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        # A symlink could point outside the game directory; only a regular file counts as installed.
        if not stat.S_ISREG(info.st_mode) or (target.size is not None and info.st_size != target.size):
            continue
        with path.open("rb") as handle:
            present[target.path] = hashlib.file_digest(handle, target.algorithm).hexdigest()
    on_disk = [f"{plan.MODS_DIR}/{entry.name}" for entry in (game_dir / plan.MODS_DIR).iterdir()]
    on_disk += [entry.name for entry in game_dir.iterdir() if entry.name.endswith(plan.PART_SUFFIX)]
    return present, on_disk


async def fetch(
    session: aiohttp.ClientSession,
    target: plan.Target,
    game_dir: Path,
    *,
    attempts: int = ATTEMPTS,
    retry_delay: float = RETRY_DELAY,
) -> None:
    """Download `target` to its place under `game_dir`, verified, retrying transient failures."""
    for attempt in range(1, attempts + 1):
        try:
            await _fetch_once(session, target, game_dir)
            return
        except DownloadUnavailable as exc:
            if attempt == attempts:
                raise InstallFailed(
                    f"{target.path}: could not download {target.url} ({attempts} attempts): {exc.message}",
                    file=target.path,
                ) from None
        await asyncio.sleep(retry_delay * 2 ** (attempt - 1))


async def _fetch_once(session: aiohttp.ClientSession, target: plan.Target, game_dir: Path) -> None:
    final = game_dir / target.path
    part = final.with_name(f".{final.name}.{secrets.token_hex(4)}{plan.PART_SUFFIX}")
    limit = target.size if target.size is not None else manifest.MAX_FILE_BYTES
    digest = hashlib.new(target.algorithm)
    received = 0
    try:
        async with session.get(target.url, timeout=_TIMEOUT, allow_redirects=True) as response:
            if response.status in (408, 429) or response.status >= 500:
                raise DownloadUnavailable(f"HTTP {response.status}")
            if response.status != 200:
                raise InstallFailed(
                    f"{target.path}: {target.url} answered HTTP {response.status}", file=target.path
                )
            announced = response.content_length
            if target.size is not None and announced is not None and announced != target.size:
                raise _size_mismatch(target, announced)
            with part.open("wb") as handle:
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    received += len(chunk)
                    if received > limit:
                        # Stop reading at once: a server sending more than pinned may never stop.
                        raise _size_mismatch(target, received, "more than ")
                    digest.update(chunk)
                    handle.write(chunk)
                handle.flush()
                await asyncio.to_thread(os.fsync, handle.fileno())
    except (aiohttp.ClientError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadUnavailable(str(exc) or type(exc).__name__) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    try:
        if target.size is not None and received != target.size:
            raise _size_mismatch(target, received)
        actual = digest.hexdigest()
        if actual != target.digest:
            raise InstallFailed(
                f"{target.path}: {target.algorithm} mismatch: expected {target.digest}, got {actual}",
                file=target.path,
                expected=target.digest,
                actual=actual,
            )
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    state.fsync_directory(final.parent)


def write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{plan.PART_SUFFIX}")
    try:
        with temporary.open("wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    state.fsync_directory(path.parent)


def _size_mismatch(target: plan.Target, actual: int, qualifier: str = "") -> InstallFailed:
    # An unpinned size is still capped, so a file server cannot fill the disk.
    expected = target.size if target.size is not None else f"at most {manifest.MAX_FILE_BYTES}"
    return InstallFailed(
        f"{target.path}: size mismatch: expected {expected} bytes, got {qualifier}{actual}",
        file=target.path,
        expected=str(expected),
        actual=f"{qualifier}{actual}",
    )
