"""A 405 that lists every method of the path.

Starlette answers a method no route takes with the `Allow` header of the
first route whose path matched, so `OPTIONS /guests` said `Allow: GET` though
the path also takes POST. RFC 9110 wants every method the resource supports;
this middleware rewrites the header from all routes that match the path."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable

from starlette.routing import BaseRoute, Match, Route

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """Every method a route for this path takes (HEAD comes with GET)."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


class AllowEveryMethod:
    def __init__(self, app: Any, routes: Callable[[], Iterable[BaseRoute]]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = ", ".join(allowed_methods(self.routes(), scope)).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", allow)]}
            await send(message)
        await self.app(scope, receive, send_with_allow)


__all__ = ["AllowEveryMethod", "allowed_methods"]
