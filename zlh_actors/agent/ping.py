"""A minimal Server List Ping client: the agent's own "is the game answering players?" check.

The agent reports `ready` only when the game answers a status request the way a Minecraft client's
server list would ask it (handshake with next state 1, status request, JSON response), because a
process that is alive but has not opened its port, or answers garbage, is not ready for players. It
is deliberately small and dependency-free (the agent runs in every container); the control plane
checks SLP independently with its own client.

Packet framing (https://minecraft.wiki/w/Java_Edition_protocol/Server_List_Ping): each packet is a
VarInt length, then a VarInt packet id, then fields; strings are a VarInt byte length and UTF-8.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

# Any protocol version works for a status request; 47 (1.8) is what most status clients send.
PROTOCOL_VERSION = 47
MAX_PACKET_BYTES = 64 * 1024


class PingFailed(Exception):
    """The port did not answer a status request with a well-formed status response."""


def encode_varint(value: int) -> bytes:
    """`value` as a protocol VarInt (negative numbers as their 32-bit two's complement, 5 bytes)."""
    value &= 0xFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes) -> tuple[int, int]:
    """The VarInt at the start of `data` and how many bytes it took; `ValueError` if incomplete."""
    result = 0
    for index in range(min(5, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return (result - (1 << 32) if result & 0x80000000 else result), index + 1
    raise ValueError("incomplete or oversized VarInt")


def packet(packet_id: int, payload: bytes = b"") -> bytes:
    body = encode_varint(packet_id) + payload
    return encode_varint(len(body)) + body


def handshake(host: str, port: int) -> bytes:
    address = host.encode("utf-8")
    fields = encode_varint(PROTOCOL_VERSION) + encode_varint(len(address)) + address
    return packet(0x00, fields + struct.pack(">H", port) + encode_varint(1))


async def status(host: str, port: int, timeout: float) -> dict[str, Any]:
    """The game's status JSON; `PingFailed` when it does not answer properly within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(handshake(host, port) + packet(0x00))
                await writer.drain()
                body = await _read_packet(reader)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        raise PingFailed(str(exc) or type(exc).__name__) from None
    try:
        packet_id, used = decode_varint(body)
        length, more = decode_varint(body[used:])
        text = body[used + more : used + more + length].decode("utf-8")
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PingFailed(f"malformed status response: {exc}") from None
    if packet_id != 0x00 or not isinstance(document, dict) or "version" not in document:
        raise PingFailed("not a status response")
    return document


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    prefix = b""
    while True:
        prefix += await reader.readexactly(1)
        try:
            length, _ = decode_varint(prefix)
            break
        except ValueError:
            if len(prefix) >= 5:
                raise
    if not 0 < length <= MAX_PACKET_BYTES:
        raise ValueError(f"packet length {length} out of range")
    return await reader.readexactly(length)
