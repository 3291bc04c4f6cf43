#!/usr/bin/env python3
"""A stand-in Minecraft server for the lab: it speaks Server List Ping and nothing else.

The lab cannot run real Minecraft servers (a JVM and a gigabyte of RAM each), but what the agent and
the control plane observe of a game is narrow: a process that takes a while to come up, then answers
Server List Ping on its port, and exits when signalled. This script is exactly that:

- it sleeps `--warmup` seconds without listening (a client connecting early is refused, as with a
  real server that is still loading), then listens on `--host`:`--port`;
- it answers the modern SLP (handshake 0x00 with VarInt fields, status request 0x00 -> JSON status,
  ping 0x01 -> pong with the same 8 bytes), the legacy 0xFE ping with a 0xFF kick packet in the 1.6
  format, and a login attempt with a polite disconnect;
- it exits with status 0 on SIGTERM or SIGINT, also during the warm-up.

The lab's file server serves this very file as the Fabric "launcher", the agent downloads and
verifies it like any launcher, and runs it with a lab game command such as
`{python} {launcher} --host {ip} --port {port} --warmup 0.5`. It must therefore run standalone from any
directory under any name: it imports nothing but the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import struct
import sys

CONNECTION_TIMEOUT = 10.0
MAX_PACKET_BYTES = 32 * 1024


def encode_varint(value: int) -> bytes:
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


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """The VarInt at `offset` and the offset after it; `ValueError` if incomplete or too long."""
    result = 0
    for shift in range(5):
        if offset >= len(data):
            raise ValueError("truncated VarInt")
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            return (result - (1 << 32) if result & 0x80000000 else result), offset
    raise ValueError("VarInt longer than 5 bytes")


def encode_packet(packet_id: int, payload: bytes = b"") -> bytes:
    body = encode_varint(packet_id) + payload
    return encode_varint(len(body)) + body


def encode_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return encode_varint(len(data)) + data


def status_document(
    motd: str, max_players: int, online: int, version: str, protocol: int
) -> dict[str, object]:
    return {
        "version": {"name": version, "protocol": protocol},
        "players": {"max": max_players, "online": online, "sample": []},
        "description": {"text": motd},
        "enforcesSecureChat": False,
    }


def legacy_kick(motd: str, max_players: int, online: int, version: str, protocol: int) -> bytes:
    """The 1.6 format kick packet that pre-1.7 clients read as a server list entry."""
    text = "\0".join(("\u00a71", str(protocol), version, motd, str(online), str(max_players)))
    return b"\xff" + struct.pack(">H", len(text)) + text.encode("utf-16-be")


class Game:
    def __init__(self, args: argparse.Namespace) -> None:
        facts = (args.motd, args.max_players, args.online, args.version_name, args.protocol)
        self.status = json.dumps(status_document(*facts)).encode("utf-8")
        self.legacy = legacy_kick(*facts)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CONNECTION_TIMEOUT):
                await self._converse(reader, writer)
        except (asyncio.IncompleteReadError, TimeoutError, ValueError, ConnectionError):
            pass  # A client that goes away or sends garbage only loses its own connection.
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(1)
        if first == b"\xfe":
            # Read what the old client sent with it, so closing does not reset the connection
            # (unread input turns the close into an RST) before it reads the answer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(4096), 0.2)
            writer.write(self.legacy)
            await writer.drain()
            return
        handshake = await self._read_packet(reader, first)
        packet_id, offset = decode_varint(handshake)
        if packet_id != 0x00:
            return
        _protocol, offset = decode_varint(handshake, offset)
        length, offset = decode_varint(handshake, offset)
        offset += length + 2  # server address, then the unsigned short port
        next_state, _ = decode_varint(handshake, offset)
        if next_state == 2:
            reason = encode_string(json.dumps({"text": "This is a ZeroLagHub lab stand-in server."}))
            writer.write(encode_packet(0x00, reason))
            await writer.drain()
            return
        while next_state == 1:
            request = await self._read_packet(reader, await reader.readexactly(1))
            packet_id, offset = decode_varint(request)
            if packet_id == 0x00:
                writer.write(encode_packet(0x00, encode_string(self.status.decode("utf-8"))))
            elif packet_id == 0x01:
                writer.write(encode_packet(0x01, request[offset : offset + 8]))
                await writer.drain()
                return
            else:
                return
            await writer.drain()

    async def _read_packet(self, reader: asyncio.StreamReader, first: bytes) -> bytes:
        prefix = first
        while prefix[-1] & 0x80:
            if len(prefix) >= 5:
                raise ValueError("packet length VarInt too long")
            prefix += await reader.readexactly(1)
        length, _ = decode_varint(prefix)
        if not 0 < length <= MAX_PACKET_BYTES:
            raise ValueError(f"packet length {length} out of range")
        return await reader.readexactly(length)


async def serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.warmup)
        return 0  # Signalled while warming up: never listened.
    except TimeoutError:
        pass
    game = Game(args)
    server = await asyncio.start_server(game.handle, args.host, args.port, reuse_address=True)
    print(f"stand-in game listening on {args.host}:{args.port}", flush=True)
    async with server:
        await stop.wait()
    print("stand-in game stopped", flush=True)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Lab stand-in Minecraft server (Server List Ping only).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=25565, help="TCP port to listen on")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds to wait before listening")
    parser.add_argument("--max-players", type=int, default=20)
    parser.add_argument("--online", type=int, default=0, help="players reported online")
    parser.add_argument("--motd", default="A ZeroLagHub lab server")
    parser.add_argument("--version-name", default="1.20.1")
    parser.add_argument("--protocol", type=int, default=763, help="protocol number reported (763 = 1.20.1)")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.max_players < 0 or args.online < 0:
        parser.error("--warmup, --max-players and --online must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(serve(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
