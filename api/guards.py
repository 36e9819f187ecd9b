"""Request guards that make the service safe to run with its defaults on a shared machine.

Outermost first: the Host header must name this service (DNS rebinding), browsers may call
it cross-site only from ``cors_origins``, state-changing requests from another origin are
refused, and request bodies are counted as they arrive, so a limit is enforced before the
body is complete (with or without ``Content-Length``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request, status
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distnmf_api.errors import problem
from distnmf_api.settings import LOOPBACK_HOSTS, Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_FIELDS_BYTES = 2**20  # room for the labels, name and boundaries of an upload's other fields


class AllowedHosts:
    """Refuse requests whose ``Host`` header names another host than ``allowed`` (DNS rebinding), as
    an RFC 9457 problem like every other error. ``allowed`` holds names, ``"*"`` (any) or
    ``"*.example.com"`` (its subdomains); a port in the header is ignored."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.names = {name.lower() for name in allowed if not name.startswith("*")}
        self.suffixes = tuple(name[1:].lower() for name in allowed if name.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = host_name(Headers(scope=scope).get("host", ""))
            if not self.allows(host):
                refusal = HTTPException(status.HTTP_400_BAD_REQUEST,
                                        f"Host header {host[:100]!r} is not this service; call it by one of "
                                        f"{sorted(self.names)[:10]} or add the name to DISTNMF_ALLOWED_HOSTS")
                await _respond(refusal, scope, receive, send)
                return
        await self.app(scope, receive, send)

    def allows(self, host: str) -> bool:
        return self.any or host in self.names or bool(self.suffixes and host.endswith(self.suffixes))


def host_name(header: str) -> str:
    """The host of a ``Host`` header without its port: ``[::1]:80`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class BodyLimit:
    """Refuse request bodies over the limit while they arrive: multipart uploads up to
    ``max_upload_bytes`` (plus the other fields), any other body up to ``max_json_bytes``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _limit(self, scope: Scope) -> tuple[int, str]:
        content_type = Headers(scope=scope).get("content-type", "").lower()
        if content_type.startswith("multipart/form-data"):
            return self.settings.max_upload_bytes + FORM_FIELDS_BYTES, "max_upload_bytes"
        return self.settings.max_json_bytes, "max_json_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, name = self._limit(scope)
        too_large = HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                  f"request body exceeds the limit {name}={getattr(self.settings, name)} "
                                  f"(set DISTNMF_{name.upper()} to change it)")
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _respond(too_large, scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        await self.app(scope, counted, send)


class SameOriginWrites:
    """Refuse state-changing requests a browser sends from another origin (cross-site request
    forgery); requests without ``Origin`` (curl, httpx, the client) and same-origin pages pass."""

    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/").lower() for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self._allowed(origin.lower(), headers.get("host", "").lower()):
                refusal = HTTPException(status.HTTP_403_FORBIDDEN,
                                        f"cross-origin {scope['method']} from {origin[:100]!r} refused; allow "
                                        f"an origin with DISTNMF_CORS_ORIGINS")
                await _respond(refusal, scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        return origin in self.allowed or (urlsplit(origin).netloc == host and host != "")


async def _respond(error: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem(Request(scope), error.status_code, str(error.detail))
    await response(scope, receive, send)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the guards to ``app`` (the last added runs first)."""
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(SameOriginWrites, allowed_origins=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(AllowedHosts, allowed=LOOPBACK_HOSTS + settings.allowed_hosts)
