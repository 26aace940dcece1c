"""API exposure: who may call what.

The daemon runs privileged on the host network, so:
- a unix socket is authenticated by its file mode (0600, root), like docker.sock;
- on a loopback TCP listen, reads are open and everything that runs commands
  or changes the lab needs the bearer token;
- on any other listen, every request needs the token.

The token comes from $BRIDGELAB_TOKEN, else from the token file, which is
created (0600) on first start. It is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from fastapi import Request

from ..errors import AuthError, BridgelabError
from ..settings import current, state_root

TOKEN_ENV = "BRIDGELAB_TOKEN"  # settings.Settings.token, named in messages
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")


def default_token_file() -> Path:
    return state_root() / "api-token"


def is_loopback_listen(listen: str) -> bool:
    if listen.startswith("unix:"):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_shape(token: str, source: str) -> str:
    if not _TOKEN_SHAPE.match(token):
        raise BridgelabError(f"the token from {source} must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -")
    return token


def env_token() -> str | None:
    token = current().token
    return token.get_secret_value() if token is not None else None


def load_or_create_token(path: Path) -> str:
    """$BRIDGELAB_TOKEN wins; else the file; else a new random token in a new 0600 file."""
    if token := env_token():
        return check_token_shape(token, TOKEN_ENV)
    try:
        return check_token_shape(path.read_text().strip(), str(path))
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def client_token(path: Path | None) -> str | None:
    """What a CLI client sends: $BRIDGELAB_TOKEN, else the token file if readable."""
    if token := env_token():
        return token
    try:
        return (path or default_token_file()).read_text().strip() or None
    except OSError:
        return None


SESSION_COOKIE = "bridgelab_session"
_SESSION_LABEL = b"bridgelab browser session v1"


def session_value(token: str) -> str:
    """What a browser's cookie holds: derived from the token (so it outlives a
    daemon restart and dies with a new token), never the token itself."""
    return hmac.new(token.encode(), _SESSION_LABEL, hashlib.sha256).hexdigest()


def same_origin(origin: str | None, host: str | None) -> bool:
    """A browser names the page's origin on every websocket and on mutating
    fetches; it must be the daemon's own (scheme aside: TLS may end in front).
    No Origin at all is a client that is not a browser (curl, the CLI)."""
    if origin is None:
        return True
    return bool(host) and origin.partition("://")[2].rstrip("/").lower() == (host or "").lower()


@dataclass(frozen=True)
class Policy:
    token: str
    open_reads: bool  # loopback TCP: GETs without a token
    trusted_transport: bool  # unix socket: the file mode is the authentication

    @classmethod
    def for_listen(cls, listen: str, token: str) -> "Policy":
        unix = listen.startswith("unix:")
        return cls(token=token, open_reads=is_loopback_listen(listen), trusted_transport=unix)

    def check(self, authorization: str | None, mutating: bool, cookie: str | None = None) -> None:
        """A bearer token (clients), or the session cookie a browser got for
        it (POST /session). The cookie is SameSite=Strict, and the routes
        check Origin besides, so another site's page cannot use it."""
        if self.trusted_transport or (self.open_reads and not mutating):
            return
        if cookie is not None and hmac.compare_digest(cookie.encode(), session_value(self.token).encode()):
            return
        if not self.token_matches(authorization):
            raise AuthError("a valid bearer token is required (Authorization: Bearer <token>; "
                            "see the token file or $BRIDGELAB_TOKEN)")

    def token_matches(self, authorization: str | None) -> bool:
        scheme, _, presented = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self.token.encode())


def reader_of(policy: Policy | None) -> Callable[[Request], Awaitable[None]]:
    """The read check as a FastAPI dependency. async: FastAPI runs a plain
    `def` dependency in its thread pool: a thread hop on every request."""
    async def reader(request: Request) -> None:
        if policy is not None:
            policy.check(request.headers.get("authorization"), mutating=False,
                         cookie=request.cookies.get(SESSION_COOKIE))
    return reader


__all__ = ["Policy", "SESSION_COOKIE", "TOKEN_ENV", "client_token", "default_token_file", "is_loopback_listen",
           "load_or_create_token", "reader_of", "same_origin", "session_value"]
