"""A TCP relay on loopback that a test can pause, cut and resume: network faults with real sockets.

    python -m tests.fakes.relay --listen 127.0.0.2:PORT --target 127.0.0.1:PORT --control PORT

Every connection accepted on ``--listen`` is relayed to ``--target``, from a socket bound to the
listen address's host (so the target sees the peer as 127.0.0.2, "another host"). The control
port (HTTP on 127.0.0.1) takes:
  POST /pause    stop forwarding in both directions; connections stay open, bytes wait (a partition)
  POST /resume   forward again, the waiting bytes first (the link heals)
  POST /drop     reset every open connection (RST); new ones are still accepted
  GET  /state    {"paused", "connections", "accepted", "bytes_up", "bytes_down"}
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
from typing import Any

from aiohttp import web


class Relay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self.paused = False
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.accepted = 0
        self.bytes = {"up": 0, "down": 0}

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                *self.target, local_addr=(self.listen[0], 0))
        except OSError:
            _reset(client_writer)
            return
        pair = (client_writer, upstream_writer)
        self.connections.add(pair)
        try:
            await asyncio.gather(self._pipe(client_reader, upstream_writer, "up"),
                                 self._pipe(upstream_reader, client_writer, "down"))
        finally:
            self.connections.discard(pair)
            for writer in pair:
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self.resumed.wait()  # paused: the bytes wait here, the connection stays up
                writer.write(data)
                self.bytes[direction] += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass

    def pause(self) -> None:
        self.paused = True
        self.resumed.clear()

    def resume(self) -> None:
        self.paused = False
        self.resumed.set()

    def drop(self) -> None:
        for pair in list(self.connections):
            for writer in pair:
                _reset(writer)

    def state(self) -> dict[str, Any]:
        return {"paused": self.paused, "connections": len(self.connections), "accepted": self.accepted,
                "bytes_up": self.bytes["up"], "bytes_down": self.bytes["down"]}


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, as a link that breaks does (no FIN handshake)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], target: tuple[str, int], control_port: int) -> None:
    relay = Relay(listen, target)
    server = await asyncio.start_server(relay.handle, *listen)

    def action(fn: Any) -> Any:
        async def handler(request: web.Request) -> web.Response:
            fn()
            return web.json_response(relay.state())

        return handler

    async def state(request: web.Request) -> web.Response:
        return web.json_response(relay.state())

    app = web.Application()
    app.router.add_post("/pause", action(relay.pause))
    app.router.add_post("/resume", action(relay.resume))
    app.router.add_post("/drop", action(relay.drop))
    app.router.add_get("/state", state)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="A pausable TCP relay for network-fault tests.")
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on (127.0.0.2:N: 'another host')")
    parser.add_argument("--target", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--control", type=int, required=True, help="HTTP control port on 127.0.0.1")
    args = parser.parse_args()
    try:
        asyncio.run(serve(_address(args.listen), _address(args.target), args.control))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
