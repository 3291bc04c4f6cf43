"""The agent's state directory: the few facts that must survive an agent restart.

    enrollment.json          the last accepted enrollment (mode 0600: it holds the callback token)
    seq                      the last report sequence number used
    applied-manifest.sha256  the manifest hash whose install completed and was verified
    game.json                the running game's pid and kernel start time, while one runs

Every write goes to a temporary file in the same directory, is fsynced, then renamed over the old
file (`os.replace` is atomic on POSIX), so a crash leaves the old or the new content, never half of
one. The applied hash is removed before an install touches the game directory and written only
after every file is verified: its presence is the single proof that the directory matches a
manifest, and the game is only ever started against it.

A file that exists but cannot be read back is a `ConfigError` at start-up rather than something to
guess around: an agent that silently forgot its seq or its enrollment would break the control
plane's ordering or start reporting for nobody.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from zlh_actors import errors
from zlh_actors.agent import manifest, wire

ENROLLMENT = "enrollment.json"
SEQ = "seq"
APPLIED = "applied-manifest.sha256"
GAME = "game.json"


@dataclasses.dataclass(frozen=True)
class GameRecord:
    """A game the agent started; `start_ticks` tells it from a later process that reuses the pid."""

    pid: int
    start_ticks: int


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # The directory holds the callback token; nobody but the agent's user needs to list it.
        os.chmod(self.root, 0o700)
        for leftover in self.root.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)

    def load_enrollment(self) -> wire.Enrollment | None:
        data = self._read_json(ENROLLMENT)
        if data is None:
            return None
        try:
            return wire.parse_enroll(data)
        except (wire.BadRequest, manifest.ManifestInvalid) as exc:
            raise errors.ConfigError(f"{self.root / ENROLLMENT} is invalid: {exc.message}") from None

    def save_enrollment(self, enrollment: wire.Enrollment) -> None:
        body = json.dumps(wire.enroll_body(enrollment), sort_keys=True, indent=1)
        self._write(ENROLLMENT, body + "\n", mode=0o600)

    def load_seq(self) -> int:
        text = self._read_text(SEQ)
        if text is None:
            return 0
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise errors.ConfigError(f"{self.root / SEQ} must hold a non-negative integer, got {text[:40]!r}")
        return value

    def save_seq(self, seq: int) -> None:
        self._write(SEQ, f"{seq}\n")

    def load_applied(self) -> str | None:
        return self._read_text(APPLIED)

    def save_applied(self, manifest_sha256: str) -> None:
        self._write(APPLIED, manifest_sha256 + "\n")

    def clear_applied(self) -> None:
        self._remove(APPLIED)

    def load_game(self) -> GameRecord | None:
        data = self._read_json(GAME)
        if data is None:
            return None
        if not (
            isinstance(data, dict)
            and isinstance(data.get("pid"), int)
            and isinstance(data.get("start_ticks"), int)
        ):
            raise errors.ConfigError(f"{self.root / GAME} is invalid: expected pid and start_ticks")
        return GameRecord(pid=data["pid"], start_ticks=data["start_ticks"])

    def save_game(self, record: GameRecord) -> None:
        self._write(GAME, json.dumps(dataclasses.asdict(record)) + "\n")

    def clear_game(self) -> None:
        self._remove(GAME)

    def _read_text(self, name: str) -> str | None:
        try:
            return (self.root / name).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise errors.ConfigError(f"cannot read {self.root / name}: {exc.strerror}") from None

    def _read_json(self, name: str) -> object:
        text = self._read_text(name)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise errors.ConfigError(f"{self.root / name} is not valid JSON") from None

    def _write(self, name: str, text: str, *, mode: int = 0o644) -> None:
        temporary = self.root / f".{name}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.root / name)
        fsync_directory(self.root)

    def _remove(self, name: str) -> None:
        try:
            (self.root / name).unlink()
        except FileNotFoundError:
            return
        fsync_directory(self.root)


def fsync_directory(path: Path) -> None:
    """Make a rename or unlink in `path` durable (the directory entry is what changed)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
