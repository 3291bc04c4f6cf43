"""The lab stand-ins' pure parts: deterministic mod jars and the SLP encoding both sides share."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile

import pytest

from zlh_actors.agent import ping
from zlh_actors.lab import files, standin_game


def test_fake_mod_jars_are_deterministic_valid_fabric_mods() -> None:
    first = files.fake_mod_jar("Lithium-0.11.jar")
    assert files.fake_mod_jar("Lithium-0.11.jar") == first
    assert hashlib.sha512(files.fake_mod_jar("sodium.jar")).digest() != hashlib.sha512(first).digest()
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert archive.testzip() is None
        metadata = json.loads(archive.read("fabric.mod.json"))
        assert len(archive.read("data.bin")) == 4096
    assert metadata["schemaVersion"] == 1
    assert metadata["id"] == "lithium_0_11"


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 25565, 2**31 - 1, -1, -(2**31)])
def test_varints_round_trip_between_the_agent_and_the_standin(value: int) -> None:
    encoded = ping.encode_varint(value)
    assert standin_game.encode_varint(value) == encoded
    assert standin_game.decode_varint(encoded) == (value, len(encoded))
    assert ping.decode_varint(encoded + b"\x00") == (value, len(encoded))


def test_varint_examples_from_the_protocol_documentation() -> None:
    assert ping.encode_varint(25565) == bytes.fromhex("dd c7 01")
    assert ping.encode_varint(-1) == bytes.fromhex("ff ff ff ff 0f")
    with pytest.raises(ValueError, match="incomplete"):
        ping.decode_varint(b"\xff\xff")


def test_agent_handshake_is_what_the_standin_parses() -> None:
    data = ping.handshake("127.0.42.7", 25565)
    length, offset = standin_game.decode_varint(data)
    body = data[offset:]
    assert len(body) == length
    packet_id, offset = standin_game.decode_varint(body)
    protocol, offset = standin_game.decode_varint(body, offset)
    size, offset = standin_game.decode_varint(body, offset)
    assert (packet_id, protocol) == (0, ping.PROTOCOL_VERSION)
    assert body[offset : offset + size] == b"127.0.42.7"
    assert struct.unpack(">H", body[offset + size : offset + size + 2]) == (25565,)
    assert standin_game.decode_varint(body, offset + size + 2)[0] == 1


def test_legacy_kick_is_the_1_6_format() -> None:
    packet = standin_game.legacy_kick("motd", 20, 3, "1.20.1", 763)
    assert packet[0] == 0xFF
    (length,) = struct.unpack(">H", packet[1:3])
    fields = packet[3:].decode("utf-16-be").split("\0")
    assert len(packet[3:]) == 2 * length
    assert fields == ["\u00a71", "763", "1.20.1", "motd", "3", "20"]
