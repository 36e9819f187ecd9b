"""Passing a request on to the service's primary process and its answer back, streamed both ways.

A query worker (:mod:`distnmf_api.query_workers`) forwards every request it does not answer itself
over one pool of keep-alive connections to the primary's internal loopback listener: the method,
path, query, headers (``Host`` and ``Authorization`` included: the primary checks them again) and
body go as they came, the status, headers and body come back as the primary sent them, a chunk at
a time (uploads, ``.npy`` downloads and server-sent events never sit whole in memory here).
"""

from __future__ import annotations

import logging

import httpx
from fastapi import Request, status
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from distnmf_api.errors import problem

log = logging.getLogger("distnmf.api")

# Headers of one connection, not of the request or answer (RFC 9110 section 7.6.1), and those the
# forwarding itself sets.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", b"x-forwarded-for", b"x-forwarded-proto"})
CONNECT_TIMEOUT = 5.0  # seconds; reads wait as long as the primary takes (long polls, event streams, uploads)


class Primary:
    """The primary process at ``url`` (its internal listener), reached through one connection pool.

    ``verify`` is False only for the internal hop of a service serving HTTPS itself: the primary
    presents the service's public certificate, issued for the public name, on 127.0.0.1.
    """

    def __init__(self, url: str, verify: bool = True) -> None:
        self.url = url
        self._http = httpx.AsyncClient(base_url=url, verify=verify,
                                       timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
                                       limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def forward(self, scope: Scope, receive: Receive, send: Send, body: bytes | None = None) -> None:
        """Answer the HTTP request of ``scope`` with the primary's answer to it; the body is read
        from ``receive`` as it arrives, or is ``body`` when already read."""
        request = Request(scope, receive)
        client = scope.get("client")
        headers = [(name, value) for name, value in scope["headers"] if name.lower() not in HOP_BY_HOP]
        headers += [(b"x-forwarded-for", (client[0] if client else "").encode()),
                    (b"x-forwarded-proto", scope.get("scheme", "http").encode())]
        declared = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"])
        content = body if body is not None else request.stream() if declared else None  # HTTP/1.1: declared or none
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        upstream = self._http.build_request(scope["method"], target.decode("latin-1"), headers=headers, content=content)
        try:
            answer = await self._http.send(upstream, stream=True)
        except httpx.TransportError as exc:
            log.warning("the primary process at %s did not answer a forwarded request: %r", self.url, exc)
            unavailable = problem(request, status.HTTP_503_SERVICE_UNAVAILABLE,
                                  "the service's primary process is not answering; retry shortly",
                                  headers={"Retry-After": "2"})
            await unavailable(scope, receive, send)
            return
        response = StreamingResponse(answer.aiter_raw(), status_code=answer.status_code)
        response.raw_headers = [(name, value) for name, value in answer.headers.raw if name.lower() not in HOP_BY_HOP]
        try:
            await response(scope, receive, send)
        finally:  # also when the client went away mid-stream: the primary's stream stops with it
            await answer.aclose()
