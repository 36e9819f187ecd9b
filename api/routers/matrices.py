"""Matrices: register a store or file under the data directory, upload one, list, get, delete."""

from __future__ import annotations

import dataclasses
import io
import uuid
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from distnmf.wire import JobStatus, MatrixPage, MatrixRecord
from distnmf_api import catalog
from distnmf_api.deps import ClusterDep, MatrixDep, SettingsDep, StoreDep
from distnmf_api.errors import Unprocessable
from distnmf_api.jobstore import StoredMatrix
from distnmf_api.schemas import Error, MatrixFormat, RegisterMatrix
from distnmf_api.settings import Settings

router = APIRouter(prefix="/matrices", tags=["matrices"])

COPY_BYTES = 2**22

_register_schema = RegisterMatrix.model_json_schema(ref_template="#/components/schemas/{model}")
_register_schema.pop("$defs", None)
_register_schema.pop("examples", None)
UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The matrix: .npy, .npz, .mtx or .csv."},
        "name": {"type": "string", "maxLength": 200, "description": "Defaults to the file name."},
        "format": {"type": "string", "enum": ["npy", "npz", "mtx", "csv"],
                   "description": "Defaults to the file name's suffix."},
        "image_shape": {"type": "string", "pattern": r"^\d+(,\d+)*$", "description": "e.g. 8,8 for 8x8 images."},
        "row_labels": {"type": "string", "format": "binary", "description": "Text file, one row label per line."},
        "col_labels": {"type": "string", "format": "binary", "description": "Text file, one column label per line."},
    },
}
CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _register_schema, "examples": {
        "register a file to ingest": {"value": {"name": "digits", "path": "incoming/digits.npy", "format": "npy"}},
        "register a Zarr store": {"value": {"name": "tags", "path": "stores/tags.zarr", "format": "zarr"}},
    }},
    "multipart/form-data": {"schema": UPLOAD_SCHEMA, "examples": {
        "upload 8x8 images": {"value": {"file": "digits.npy", "name": "digits", "image_shape": "8,8"}},
    }},
}}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=MatrixRecord, openapi_extra=CREATE_BODY,
             responses={400: {"model": Error, "description": "Path outside the data directory or missing"},
                        413: {"model": Error, "description": "Upload larger than max_upload_bytes"},
                        415: {"model": Error, "description": "Neither JSON nor multipart"},
                        422: {"description": "Invalid body, or a matrix that is not finite and non-negative"}})
async def create_matrix(request: Request, settings: SettingsDep, store: StoreDep, cluster: ClusterDep) -> MatrixRecord:
    """Register a matrix under the data directory (JSON), or upload one (multipart).

    Files other than Zarr stores are ingested into a new Zarr store. Every row block is
    checked: negative or non-finite values give 422 naming the row and column.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        record = await _upload(request, settings, store)
    elif content_type == "application/json":
        body = await _json_body(request)
        record = await run_in_threadpool(catalog.register, store, cluster, settings.layout, body.path,
                                         body.format, body.name, settings.ingest_limits())
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            "send JSON (register a path) or multipart/form-data (upload a file)")
    return record


async def _json_body(request: Request) -> RegisterMatrix:
    raw = await request.body()  # bounded while read by guards.BodyLimit (max_json_bytes)
    try:
        return RegisterMatrix.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def _too_large(settings: Settings) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"upload exceeds the limit max_upload_bytes={settings.max_upload_bytes} "
                         f"(set DISTNMF_MAX_UPLOAD_BYTES to change it)")


async def _upload(request: Request, settings: Settings, store: StoreDep) -> StoredMatrix:
    """The body's size is bounded while it arrives (``guards.BodyLimit``); here the file part's."""
    form = await request.form(max_files=3, max_fields=10)
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise Unprocessable("multipart field 'file' (the matrix file) is missing")
        if file.size is not None and file.size > settings.max_upload_bytes:
            raise _too_large(settings)
        fmt = _upload_format(form, file)
        name = str(form.get("name") or file.filename or "upload")[:200]
        image_shape = _image_shape(form.get("image_shape"))
        row_labels = _labels(form, "row_labels")
        col_labels = _labels(form, "col_labels")
        matrix_id = uuid.uuid4().hex[:16]
        target = settings.layout.upload(matrix_id, catalog.SUFFIXES[fmt])
        await _save(file, target, settings)
        try:
            return await run_in_threadpool(catalog.ingest, store, settings.layout, target, fmt, matrix_id, name,
                                           settings.ingest_limits(), row_labels=row_labels, col_labels=col_labels,
                                           image_shape=image_shape)
        finally:
            target.unlink(missing_ok=True)
    finally:
        await form.close()


def _upload_format(form: FormData, file: UploadFile) -> MatrixFormat:
    given = form.get("format")
    suffix = Path(file.filename or "").suffix.lower().lstrip(".")
    value = given if isinstance(given, str) and given else suffix
    try:
        fmt = MatrixFormat(value)
    except ValueError:
        raise Unprocessable(f"cannot tell the upload's format from {value!r}: give format=npy, npz, mtx "
                                    f"or csv") from None
    if fmt == MatrixFormat.zarr:
        raise Unprocessable("a Zarr store cannot be uploaded; copy it into the data directory and "
                                    "register its path")
    return fmt


def _image_shape(value: Any) -> list[int] | None:
    if value is None or value == "":
        return None
    parts = str(value).replace("x", ",").split(",")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts) or len(parts) > 4:
        raise Unprocessable(f"image_shape must be positive integers like '8,8', got {value!r}")
    return [int(p) for p in parts]


def _labels(form: FormData, field: str) -> IO[bytes] | None:
    """The label part as a binary stream, read line by line by the ingest (never whole, never here)."""
    value = form.get(field)
    if value is None:
        return None
    if isinstance(value, UploadFile):
        value.file.seek(0)
        return value.file
    return io.BytesIO(value.encode())


async def _save(file: UploadFile, target: Path, settings: Settings) -> None:
    """Copy the upload to ``target``, refusing more than ``max_upload_bytes``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(target, "wb") as out:
        while chunk := await file.read(COPY_BYTES):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                out.close()
                target.unlink(missing_ok=True)
                raise _too_large(settings)
            await run_in_threadpool(out.write, chunk)


@router.get("", response_model=MatrixPage, responses={404: {"model": Error, "description": "Unknown cursor"}})
def list_matrices(store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000, description="Matrices per page")] = 100,
                  cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")]
                  = None) -> MatrixPage:
    """Registered matrices, oldest first, a page at a time."""
    if cursor is not None and store.get_matrix(cursor) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"cursor {cursor!r} names no matrix (it may have been deleted)")
    records = store.list_matrices(after=cursor, limit=limit + 1)
    items = [MatrixRecord(**{f.name: getattr(r, f.name) for f in dataclasses.fields(MatrixRecord)})
             for r in records[:limit]]
    return MatrixPage(items=items, next_cursor=items[-1].id if len(records) > limit else None)


@router.get("/{matrix_id}", response_model=MatrixRecord, responses={404: {"model": Error}})
def get_matrix(matrix: MatrixDep) -> MatrixRecord:
    """One matrix: shape, non-zeros, density, layout, labels."""
    return matrix


@router.delete("/{matrix_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={404: {"model": Error}, 409: {"model": Error, "description": "Jobs still use it"}})
def delete_matrix(matrix: MatrixDep, store: StoreDep, settings: SettingsDep) -> Response:
    """Forget a matrix (and remove the store if the service ingested it)."""
    busy = [j.id for s in (JobStatus.queued, JobStatus.running) for j in store.list_jobs(s, matrix.id)]
    if busy:
        raise HTTPException(status.HTTP_409_CONFLICT, f"jobs {busy} still use matrix {matrix.id}; cancel them first")
    catalog.delete(store, settings.layout, matrix)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
