"""Ownership marks: how a container says which server (and which generation of it) it belongs to.

Two marks, for two readers:

- The description, authoritative. One line in the container's notes:
      zlh-owner: server=<uuid> generation=<n>
  It is sent with the clone request itself (PVE writes it into the new config before the clone
  task starts), so a container we created is marked from its first moment: a crash anywhere later
  leaves a container the next attempt recognises and adopts. Ownership checks (adopt, destroy,
  start, stop) read only this.

- Tags, for listing. `/cluster/resources` returns every guest's tags in one request (it does not
  return descriptions), so the reconciler can list the fleet without reading each config:
      zlh                  "managed by zlh-actors"
      zlh-<uuid hex>       the server id, 32 lowercase hex digits (PVE tags allow no uppercase and
                           are case-folded; the hex form avoids ambiguity about dashes)
      zlh-g<n>             the generation
  Tags are set by the config update that follows the clone, so for a short window (or after a
  crash in it) a container has the description but not the tags; the next `ensure_container`
  adds them.

A mark that cannot be parsed is no mark: the container is not ours.
"""

from __future__ import annotations

import dataclasses
import re
import uuid

TAG = "zlh"

_OWNER_LINE = re.compile(
    r"^zlh-owner: server=(?P<server>[0-9a-fA-F-]{36}) generation=(?P<generation>\d+)\s*$", re.M
)
_ID_TAG = re.compile(r"^zlh-(?P<hex>[0-9a-f]{32})$")
_GENERATION_TAG = re.compile(r"^zlh-g(?P<generation>\d+)$")
# PVE accepts tags separated by semicolons, commas or spaces, and answers with semicolons.
_TAG_SEPARATORS = re.compile(r"[;,\s]+")


@dataclasses.dataclass(frozen=True)
class Marks:
    """The owner a container claims: a server and its generation."""

    server_id: uuid.UUID
    generation: int


def owner_line(marks: Marks) -> str:
    return f"zlh-owner: server={marks.server_id} generation={marks.generation}"


def description(marks: Marks, name: str) -> str:
    """The container's description: a line for humans, then the owner line."""
    return f"ZeroLagHub server {name}; managed by zlh-actors, do not edit the next line.\n{owner_line(marks)}"


def from_description(text: object) -> Marks | None:
    """The marks in a description, or None if there is none, or more than one that disagree."""
    if not isinstance(text, str):
        return None
    found = set()
    for match in _OWNER_LINE.finditer(text):
        try:
            found.add(Marks(uuid.UUID(match["server"]), int(match["generation"])))
        except ValueError:
            return None
    return found.pop() if len(found) == 1 else None


def tags(marks: Marks) -> tuple[str, ...]:
    return (TAG, f"{TAG}-{marks.server_id.hex}", f"{TAG}-g{marks.generation}")


def format_tags(marks: Marks) -> str:
    return ";".join(tags(marks))


def split_tags(text: object) -> frozenset[str]:
    """The set of tags in PVE's tag string (None or absent: no tags)."""
    if not isinstance(text, str):
        return frozenset()
    return frozenset(tag.lower() for tag in _TAG_SEPARATORS.split(text) if tag)


def carries_tag(text: object) -> bool:
    """True if the tag string includes the `zlh` tag."""
    return TAG in split_tags(text)


def from_tags(text: object) -> Marks | None:
    """The marks in a tag string, or None unless it holds exactly one id tag and one generation tag."""
    ids, generations = set(), set()
    for tag in split_tags(text):
        if found := _ID_TAG.match(tag):
            ids.add(uuid.UUID(hex=found["hex"]))
        elif found := _GENERATION_TAG.match(tag):
            generations.add(int(found["generation"]))
    if len(ids) != 1 or len(generations) != 1:
        return None
    return Marks(ids.pop(), generations.pop())
