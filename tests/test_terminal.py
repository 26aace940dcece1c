"""The console for people (guest/terminal.py) against a real unix socket
that stands in for qemu's virtconsole chardev (one client at a time), and
the browser-session rules of api/auth.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bridgelab.api.auth import Policy, same_origin, session_value
from bridgelab.errors import AuthError, GuestError
from bridgelab.guest.terminal import SCROLLBACK, TerminalHub


class FakeConsole:
    """A getty-like peer: greets each client, echoes what it types, upper-cased."""

    def __init__(self, sock: Path):
        self.sock = sock
        self.clients = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> asyncio.AbstractServer:
        return await asyncio.start_unix_server(self.serve, str(self.sock))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        self.writers.append(writer)
        writer.write(b"login: ")
        await writer.drain()
        while data := await reader.read(100):
            writer.write(data.upper())
            await writer.drain()
        writer.close()


async def settle(until: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not until():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_viewers_share_one_connection_and_a_late_one_sees_the_screen_so_far(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeConsole(tmp_path / "term.sock")
        server = await fake.start()
        hub = TerminalHub(fake.sock, "rv1")
        first: list[bytes] = []
        detach_first = await hub.attach(first.append)
        await hub.type(b"root\r")
        await settle(lambda: b"".join(first) == b"login: ROOT\r")
        late: list[bytes] = []
        await hub.attach(late.append)
        assert b"".join(late) == b"login: ROOT\r"  # the screen so far, at once
        await hub.type(b"x")
        await settle(lambda: b"".join(late).endswith(b"X") and b"".join(first).endswith(b"X"))
        detach_first()
        await hub.type(b"y")
        await settle(lambda: b"".join(late).endswith(b"Y"))
        assert not b"".join(first).endswith(b"Y")
        assert fake.clients == 1  # qemu serves one client: the hub is it
        await hub.close()
        server.close()
    asyncio.run(main())


def test_the_screen_kept_for_late_viewers_is_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeConsole(tmp_path / "term.sock")
        server = await fake.start()
        hub = TerminalHub(fake.sock, "rv1")
        seen: list[bytes] = []
        await hub.attach(seen.append)
        await hub.type(b"a" * (SCROLLBACK * 2))
        await settle(lambda: sum(map(len, seen)) == len(b"login: ") + SCROLLBACK * 2)
        late: list[bytes] = []
        await hub.attach(late.append)
        assert b"".join(late) == b"A" * SCROLLBACK
        await hub.close()
        server.close()
    asyncio.run(main())


def test_a_restarted_qemu_is_reconnected_and_a_missing_one_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "term.sock"
        hub = TerminalHub(sock, "rv1")
        with pytest.raises(GuestError, match="guest rv1: its console for people is not available"):
            await hub.attach(lambda _: None)
        fake = FakeConsole(sock)
        server = await fake.start()
        seen: list[bytes] = []
        await hub.attach(seen.append)
        await settle(lambda: fake.writers)
        fake.writers[0].close()  # qemu went away: the connection ends
        server.close()
        await server.wait_closed()
        sock.unlink()
        server = await fake.start()  # the guest's new qemu, on the same path
        await hub.type(b"z")
        await settle(lambda: b"".join(seen).endswith(b"login: Z"))
        assert fake.clients == 2
        await hub.close()
        server.close()
    asyncio.run(main())


@pytest.mark.parametrize("origin, host, ok", [
    (None, "127.0.0.1:8700", True),  # not a browser
    ("http://127.0.0.1:8700", "127.0.0.1:8700", True),
    ("https://lab.example:8443", "lab.example:8443", True),  # TLS ended in front
    ("http://127.0.0.1:8701", "127.0.0.1:8700", False),
    ("http://evil.example", "127.0.0.1:8700", False),
    ("null", "127.0.0.1:8700", False),  # a sandboxed or file: page
    ("http://127.0.0.1:8700", None, False),
])
def test_same_origin(origin: str | None, host: str | None, ok: bool) -> None:
    assert same_origin(origin, host) is ok


def test_the_session_cookie_stands_for_the_token_only() -> None:
    token = "a-token-0123456789abcdef"
    policy = Policy(token=token, open_reads=True, trusted_transport=False)
    cookie = session_value(token)
    assert token not in cookie and cookie == session_value(token)
    policy.check(None, mutating=True, cookie=cookie)
    with pytest.raises(AuthError):
        policy.check(None, mutating=True, cookie=session_value("another-token-0123456789"))
    with pytest.raises(AuthError):
        policy.check(None, mutating=True, cookie=token)  # the token itself is not a session
    policy.check(f"Bearer {token}", mutating=True)
