"""Domain errors of the service and the one place they become HTTP answers.

Service logic (the catalog, the routes' checks) raises these without knowing HTTP; the handler
installed on the app answers ``{"detail": message}`` with the error's status code.
"""

from __future__ import annotations

from typing import ClassVar

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse


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


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ServiceError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


def install(app: FastAPI) -> None:
    """Answer every :class:`ServiceError` raised while handling a request."""
    app.add_exception_handler(ServiceError, _answer)
