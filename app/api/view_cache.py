"""The guests as the API shows them, built once per change and kept as JSON
bytes, so that a hundred clients polling `GET /guests` cost one build, not a
hundred (and no file read at all).

A guest's view is out of date when the lab's generation moved (every state,
stage, mesh or address change notifies the lab) or when its console printed
something since (the view carries the console's tail, which comes from the
console pump's buffer; only a guest with no live console, stopped or
failed, has its tail read from the log file, once per generation).
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable

import orjson

from ..guest.session import readable
from ..lab.guest_runtime import GuestRuntime
from .schemas import GuestView
from .views import console_tail, guest_view, tail_lines

Key = tuple[Hashable, ...]


def dumps(model: GuestView) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


class GuestViews:
    def __init__(self, generation: Callable[[], int]):
        self._generation = generation
        self._built: dict[str, tuple[Key, bytes]] = {}

    def one(self, g: GuestRuntime) -> bytes:
        recent = g.console.recent_output() if g.console is not None else None
        key: Key = (self._generation(), id(g.plan), g.process.pid, recent[0] if recent else None)
        built = self._built.get(g.plan.name)
        if built is not None and built[0] == key:
            return built[1]
        tail = tail_lines(readable(recent[1].decode(errors="replace"))) if recent else console_tail(
            g.plan.paths.console_log)
        body = dumps(guest_view(g, tail=tail))
        self._built[g.plan.name] = (key, body)
        return body

    def many(self, guests: list[GuestRuntime]) -> bytes:
        """A JSON array of the views, as `GET /guests` answers."""
        self._forget(g.plan.name for g in guests)
        return b"[" + b",".join(self.one(g) for g in guests) + b"]"

    def _forget(self, names: Iterable[str]) -> None:
        """Drop the views of guests that are gone (removed at runtime)."""
        keep = set(names)
        for name in [n for n in self._built if n not in keep]:
            del self._built[name]


__all__ = ["GuestViews", "dumps"]
