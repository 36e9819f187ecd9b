"""Domain errors of the service and the one place errors become HTTP answers.

Service logic (the catalog, the routes' checks) raises these without knowing HTTP. Every error
answer, of these, of ``HTTPException`` and of request validation, is an RFC 9457 problem
(``application/problem+json``): ``type``, ``title``, ``status``, ``detail`` (the message) and
``instance`` (the request path); validation errors also list each failure under ``errors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

MEDIA_TYPE = "application/problem+json"


class ServiceError(Exception):
    """An error whose message is meant for the caller; ``status_code`` is its HTTP status."""

    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    headers: ClassVar[dict[str, str]] = {}


class PathRefused(ServiceError):
    """A path that is not a plain relative path to something inside the data directory (400)."""

    status_code = status.HTTP_400_BAD_REQUEST


class Unprocessable(ServiceError):
    """Well-formed but invalid input: parameters, a limit exceeded, a matrix or rows NMF cannot take (422)."""

    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT


class ClusterUnavailable(ServiceError):
    """No Dask scheduler is reachable right now (503; retry once ``/health`` is ``ok``)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


def problem(request: Request, status_code: int, detail: str, headers: Mapping[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status_code).phrase, "status": status_code,
            "detail": detail, "instance": request.url.path, **extra}
    return JSONResponse(jsonable_encoder(body), status_code=status_code, headers=headers, media_type=MEDIA_TYPE)


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ServiceError):
        return problem(request, exc.status_code, str(exc), exc.headers)
    if isinstance(exc, HTTPException):
        return problem(request, exc.status_code, str(exc.detail), exc.headers)
    if isinstance(exc, RequestValidationError):
        errors = [{key: e[key] for key in ("loc", "msg", "type") if key in e} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
        return problem(request, status.HTTP_422_UNPROCESSABLE_CONTENT, message, errors=errors)
    return problem(request, status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc))


PROBLEM_SCHEMA = {
    "type": "object", "title": "Problem", "required": ["title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "instance": {"type": "string"},
                   "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}},
}


def install(app: FastAPI) -> None:
    """Answer every :class:`ServiceError`, ``HTTPException`` and validation error as a problem, and
    document error responses so in the OpenAPI schema."""
    for exception in (ServiceError, HTTPException, RequestValidationError):
        app.add_exception_handler(exception, _answer)
    schema_of_app = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = schema_of_app()
            schema.setdefault("components", {}).setdefault("schemas", {})["HTTPValidationError"] = PROBLEM_SCHEMA
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    for code, response in operation.get("responses", {}).items():
                        if code[0] in "45" and "application/json" in response.get("content", {}):
                            response["content"] = {MEDIA_TYPE: response["content"]["application/json"]}
        cached = app.openapi_schema
        assert cached is not None  # FastAPI's openapi() caches what it builds there
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
