"""The dashboard's door: the cluster token, given once in the URL, then a cookie.

Invariants:

- Every request (pages, static files, the JSON API, the live feed) carries the token: as
  ``?token=T`` (answered with a redirect to the same URL without it, setting the cookie, as
  Jupyter does), as the cookie, or as ``Authorization: Bearer T`` (scripts).
- Without it the answer is 401; with a wrong one 403. Either says nothing about the cluster:
  a fixed short text, no headers beyond the required ones.
- The cookie holds an HMAC of the token, not the token: it opens this dashboard only, and
  is HttpOnly, SameSite=Strict, Secure under TLS. Its name carries the port, so two
  dashboards on one host (cookies ignore ports) do not log each other out.
- Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = ["TokenGate", "cookie_value"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REFUSED = {
    401: b"401 Unauthorized: open the dashboard with the link its command printed "
    b"(it ends in ?token=...).\n",
    403: b"403 Forbidden: wrong token.\n",
}


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"sperse dashboard cookie v1", hashlib.sha256).hexdigest()


def _cookie_name(scope: Scope) -> str:
    server = scope.get("server") or ("", 0)
    return f"sperse-dashboard-{server[1]}"


async def _refuse(send: Send, status: int) -> None:
    body = _REFUSED[status]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TokenGate:
    """ASGI middleware: lets a request through to ``app`` only with the token."""

    def __init__(self, app: ASGIApp, token: str, *, secure: bool = False) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self._app = app
        self._token = token.encode()
        self._cookie = cookie_value(token).encode()
        self._secure = secure

    def _valid(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._app(scope, receive, send)
            return  # websockets: none served
        headers = dict(scope.get("headers") or [])
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [value for key, value in query if key == "token"]
        if given:
            if not self._valid(given[-1]):
                await _refuse(send, 403)
                return
            await self._log_in(scope, send, [(k, v) for k, v in query if k != "token"])
            return
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.startswith("Bearer "):
            if self._valid(auth.removeprefix("Bearer ").strip()):
                await self._app(scope, receive, send)
            else:
                await _refuse(send, 403)
            return
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get(b"cookie", b"").decode("latin-1"))
        except Exception:  # a malformed cookie header is no cookie
            cookies = SimpleCookie()
        morsel = cookies.get(_cookie_name(scope))
        if morsel is None:
            await _refuse(send, 401)
        elif hmac.compare_digest(morsel.value.encode(), self._cookie):
            await self._app(scope, receive, send)
        else:
            await _refuse(send, 403)

    async def _log_in(self, scope: Scope, send: Send, rest: list[tuple[str, str]]) -> None:
        target = "/" + str(scope.get("path", "/")).lstrip("/")  # never //host: no open redirect
        if rest:
            target += "?" + urlencode(rest)
        cookie = f"{_cookie_name(scope)}={self._cookie.decode()}; Path=/; HttpOnly; SameSite=Strict"
        if self._secure:
            cookie += "; Secure"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", target.encode("latin-1", "replace")),
                    (b"set-cookie", cookie.encode()),
                    (b"content-length", b"0"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
