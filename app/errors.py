"""One error hierarchy for the whole project.

Every failure a user can meet is a BridgelabError subclass with a message
that says what went wrong and, where it helps, what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass


class BridgelabError(Exception):
    """Base of every error bridgelab raises on purpose."""


@dataclass(frozen=True)
class FieldIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(BridgelabError):
    """The lab file (or an API request) is invalid; nothing was created."""

    def __init__(self, issues: list[FieldIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class SettingsError(BridgelabError):
    """A BRIDGELAB_* environment variable has a value bridgelab cannot use."""


class ImageError(BridgelabError):
    """An image is missing, malformed, or failed to build."""


class HostNetError(BridgelabError):
    """Creating or removing host network objects failed."""


class CommandFailed(BridgelabError):
    """A host subprocess exited non-zero or timed out."""

    def __init__(self, argv: list[str], returncode: int | None, stdout: str, stderr: str, reason: str = ""):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        what = reason or f"exited with {returncode}"
        tail = stderr.strip()[-2000:]
        super().__init__(f"{argv[0]} {what}" + (f": {tail}" if tail else ""))


class GuestError(BridgelabError):
    """Something went wrong with one guest; the others are unaffected."""


class QemuStartError(GuestError):
    """qemu exited (or never opened its sockets) while starting."""


class ConsoleError(GuestError):
    """The serial console did not behave as expected."""


class ConsoleClosed(ConsoleError):
    """The console's other end went away: usually qemu exited."""


class BootFailed(ConsoleError):
    """The console showed a failure after which no login prompt comes (getty, root device, panic)."""


class LoginIncorrect(ConsoleError):
    """The guest rejected the configured user/password."""


class ConsoleTimeout(ConsoleError):
    """The guest did not answer on its console before the deadline."""


class GuestCommandTimeout(ConsoleTimeout):
    """A command run in the guest did not finish in time (it was interrupted)."""


class GuestCommandFailed(ConsoleError):
    """A command run in the guest (by console or agent) exited non-zero."""

    def __init__(self, command: str, returncode: int, output: str):
        self.command = command
        self.returncode = returncode
        self.output = output
        super().__init__(f"guest command exited {returncode}: {command}\n{output.strip()[-1500:]}")


class NetworkConfigError(GuestError):
    """NetworkManager in the guest did not end up with the requested address."""


class PeerClash(GuestError):
    """A peer host declares what this guest (or this host's bridge) would also use."""


class UnknownGuest(BridgelabError):
    """No guest of that name in the lab (HTTP 404)."""


class NoPeers(UnknownGuest):
    """The lab has no peers to show (a 404, like an unknown guest)."""


class UnknownSnapshot(UnknownGuest):
    """The guest exists but has no snapshot of that name (HTTP 404, like a missing guest)."""


class GuestBusy(BridgelabError):
    """The guest is not in a state that allows the request, or another request holds it (HTTP 409)."""


class GuestTimeout(GuestError):
    """The guest did not get there before the deadline (HTTP 504)."""


class AuthError(BridgelabError):
    """A request without the right bearer token (HTTP 401)."""


class CrossOrigin(BridgelabError):
    """A browser request from another site's page to change the lab (HTTP 403)."""
