"""The typed exceptions of the service's client: one per HTTP answer, and a job's failure or cancel."""

from __future__ import annotations

import httpx

from distnmf.wire import JobRecord


class DistnmfError(Exception):
    """An error answer from the service (``status_code``, ``detail``), or no answer at all."""

    def __init__(self, detail: str, status_code: int | None = None) -> None:
        super().__init__(detail if status_code is None else f"{status_code}: {detail}")
        self.detail = detail
        self.status_code = status_code


class BadRequest(DistnmfError):
    """400: e.g. a path outside the service's data directory."""


class Unauthorized(DistnmfError):
    """401: missing or wrong token."""


class NotFound(DistnmfError):
    """404: no such matrix, job, component, row or column."""


class Conflict(DistnmfError):
    """409: e.g. factors of an unfinished job, or a job_id reused with another body."""


class PayloadTooLarge(DistnmfError):
    """413: an upload over the service's limit."""


class InvalidRequest(DistnmfError):
    """422: invalid parameters, a limit exceeded, or a matrix with negative values."""


class ServerError(DistnmfError):
    """5xx (after retries for idempotent calls)."""


class ServiceUnavailable(DistnmfError):
    """The service could not be reached (after retries for idempotent calls)."""


class JobFailed(DistnmfError):
    """The job ended ``failed``; ``job`` holds its record."""

    def __init__(self, detail: str, job: JobRecord) -> None:
        super().__init__(detail)
        self.job = job


class JobCancelled(JobFailed):
    """The job ended ``cancelled``."""


_ERRORS = {400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
           422: InvalidRequest}


def raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text or response.reason_phrase
    if isinstance(detail, list):  # validation errors: [{"loc": [...], "msg": ...}, ...]
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in detail)
    code = response.status_code
    cls = _ERRORS.get(code, ServerError if code >= 500 else DistnmfError)
    raise cls(str(detail), code)


