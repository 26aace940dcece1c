"""A guest's life in the lab, as one transition table.

    pending -> booting -> login -> configuring -> verifying -> ready
    ready -> configuring (a new address) | booting (a reboot)
    any but stopped -> failed (qemu died, login refused, a step failed) | stopping -> stopped
    stopped -> booting (started again)

The API schema, the CLI and the runner take the names from here; a
transition that is not in the table raises instead of leaving a guest in a
state nobody planned for.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import GuestBusy


class GuestState(StrEnum):
    pending = "pending"
    booting = "booting"
    login = "login"
    configuring = "configuring"
    verifying = "verifying"
    ready = "ready"
    failed = "failed"
    stopping = "stopping"
    stopped = "stopped"


S = GuestState
_ANY_RUNNING = (S.failed, S.stopping)
TRANSITIONS: dict[GuestState, frozenset[GuestState]] = {
    S.pending: frozenset({S.booting, S.stopped, *_ANY_RUNNING}),
    S.booting: frozenset({S.login, *_ANY_RUNNING}),
    S.login: frozenset({S.configuring, *_ANY_RUNNING}),
    S.configuring: frozenset({S.verifying, *_ANY_RUNNING}),
    S.verifying: frozenset({S.ready, *_ANY_RUNNING}),
    S.ready: frozenset({S.configuring, S.booting, *_ANY_RUNNING}),
    S.failed: frozenset({S.stopping}),
    S.stopping: frozenset({S.stopped}),
    S.stopped: frozenset({S.booting}),
}

ON_THE_WAY = frozenset({S.pending, S.booting, S.login, S.configuring})  # the mesh check waits for these
SETTLED = frozenset({S.ready, S.failed, S.stopped})  # what /wait waits for
HAS_SHELL = frozenset({S.ready})  # exec, network changes, reboot


class InvalidTransition(GuestBusy):
    """A move the table does not have: a bug, or the guest changed under a
    request (its qemu died meanwhile), which the API answers with 409."""


def check_transition(name: str, old: GuestState, new: GuestState) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"guest {name}: {old} -> {new} is not a valid transition")


__all__ = ["GuestState", "HAS_SHELL", "InvalidTransition", "ON_THE_WAY", "SETTLED", "TRANSITIONS",
           "check_transition"]
