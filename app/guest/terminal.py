"""The people's console of a guest: its virtio console (hvc0), where the
guest runs a getty of its own, with echo.

qemu's socket chardev serves one client at a time, so one hub per guest
holds the connection and shares it: every viewer gets what the guest
prints (a new one first gets the recent screen), and every viewer's keys go
to the guest, as in a shared tmux session. The serial console stays the
automation's; nothing typed here can reach a command bridgelab runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Callable

from ..errors import GuestError

log = logging.getLogger(__name__)

SCROLLBACK = 16 * 1024  # bytes replayed to a viewer that attaches
READ_CHUNK = 4096

Viewer = Callable[[bytes], None]


class TerminalHub:
    def __init__(self, sock: Path, name: str):
        self.sock, self.name = sock, name
        self._viewers: list[Viewer] = []
        self._screen = bytearray()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def attach(self, viewer: Viewer) -> Callable[[], None]:
        """Start showing the guest's output to `viewer` (recent screen first);
        returns the detach function. Connects on first use, and again after
        qemu was restarted (the old connection ended)."""
        await self._connect()
        if self._screen:
            viewer(bytes(self._screen))
        self._viewers.append(viewer)

        def detach() -> None:
            with contextlib.suppress(ValueError):
                self._viewers.remove(viewer)
        return detach

    async def type(self, keys: bytes) -> None:
        """Keys to the guest. A connection that broke under us (qemu was
        restarted, and its end not yet seen by the reader) is replaced once."""
        for retry in (False, True):
            await self._connect()
            assert self._writer is not None
            try:
                self._writer.write(keys)
                await self._writer.drain()
                return
            except OSError as e:
                self._writer.close()
                if retry:
                    raise GuestError(f"guest {self.name}: its console for people closed ({e})") from None

    async def _connect(self) -> None:
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.sock))
            except OSError as e:
                raise GuestError(f"guest {self.name}: its console for people is not available ({e.strerror})") \
                    from None
            self._writer = writer
            self._screen.clear()
            self._reader_task = asyncio.create_task(self._pump(reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(READ_CHUNK):
                self._screen += data
                del self._screen[:-SCROLLBACK]
                for viewer in list(self._viewers):
                    viewer(data)
        except OSError as e:
            log.info("guest %s: console for people closed (%s)", self.name, e)
        finally:
            writer.close()  # its own: a newer connection may be in place already

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
        self._viewers.clear()


__all__ = ["TerminalHub"]
