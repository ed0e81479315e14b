"""A TCP load balancer for tests: each new connection goes to the first
backend that accepts it, in order, and its bytes are relayed both ways. When
a backend dies its connections end, and reconnecting clients land on the
next one, as behind a real load balancer with health-checked backends."""

from __future__ import annotations

import asyncio
import threading

from tests.support.servers import free_port


class Balancer:
    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.routed: dict[int, int] = {}
        """How many connections went to each backend port."""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-balancer", daemon=True)

    def __enter__(self) -> Balancer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the balancer did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.routed[port] = self.routed.get(port, 0) + 1
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass
