"""Results of a succeeded job: W and H ranges, top of a component, similar rows, fold-in, recommend;
a rank-selection job's report and plot."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import StrEnum
from typing import Annotated, Any

import numpy as np
import scipy.sparse as sp
from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from distnmf import analysis, plots
from distnmf.dask_context import client_of_this_thread
from distnmf.factors import Factors
from distnmf.store import open_matrix
from distnmf.wire import Hit
from distnmf_api import factor_io
from distnmf_api.cluster import Cluster
from distnmf_api.deps import ClusterDep, FactorsDep, JobDep, RankJobDep, ServedDep, SettingsDep, StoreDep
from distnmf_api.errors import Unprocessable
from distnmf_api.schemas import (
    Axis,
    ComponentTop,
    Error,
    FactorFormat,
    FactorRange,
    LabelRow,
    RankReport,
    Similar,
    SparseRow,
    TransformRequest,
    TransformResult,
)
from distnmf_api.serving import Served
from distnmf_api.settings import Settings

router = APIRouter(prefix="/jobs/{job_id}", tags=["results"])

Responses = dict[int | str, dict[str, Any]]

NOT_READY: Responses = {404: {"model": Error, "description": "No such job, or no such row/column"},
             409: {"model": Error, "description": "The job has not succeeded (yet)"}}
IN_PROCESS_BYTES = 2**20  # transform bodies up to this size are folded in here, not sent to the cluster
INLINE_ROWS, INLINE_ENTRIES = 4, 1_000  # transforms up to this size are folded in on the event loop (~0.1 ms)
QUERY_ERRORS: Responses = {**NOT_READY, 422: {"description": "Invalid query, or a limit exceeded"}}


class Factor(StrEnum):
    W = "W"
    H = "H"


def _check_k(settings: Settings, name: str, value: int) -> None:
    if message := settings.limit_error("max_k", name, value):
        raise Unprocessable(message)


@contextmanager
def _query(cluster: Cluster | None) -> Iterator[None]:
    """Run a query's Dask work on the service's cluster (None: in this process); map its errors to HTTP.

    Unknown labels and out-of-range indices are 404; other invalid queries are 422.
    """
    try:
        with client_of_this_thread(cluster.client) if cluster is not None else nullcontext():
            yield
    except (analysis.UnknownLabelError, analysis.IndexOutOfRangeError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None


@router.get("/factors/{factor}", response_class=StreamingResponse,
            responses={200: {"model": FactorRange, "description": "JSON, or .npy bytes with format=npy",
                             "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                 "format": "binary"}}}},
                       **QUERY_ERRORS})
def get_factor(factor: Factor, factors: FactorsDep, settings: SettingsDep,
               start: Annotated[int, Query(ge=0, description="First row of W / column of H")] = 0,
               stop: Annotated[int | None, Query(ge=0, description="End of the range, clipped to the length")] = None,
               format: FactorFormat = FactorFormat.json) -> StreamingResponse:
    """Rows ``start:stop`` of W, or columns ``start:stop`` of H, streamed as JSON or ``.npy``."""
    n = factors.shape[0] if factor == Factor.W else factors.shape[1]
    stop = n if stop is None else min(stop, n)
    if start > stop:
        raise Unprocessable(f"start={start} is past the end of the range (stop={stop}; {factor} has {n} "
                            f"{'rows' if factor == Factor.W else 'columns'})")
    if message := settings.limit_error("max_range", "stop - start", stop - start):
        raise Unprocessable(f"{message}; download it in several ranges")
    if format == FactorFormat.npy:
        return StreamingResponse(factor_io.stream_npy(factors, factor, start, stop),
                                 media_type="application/octet-stream",
                                 headers={"Content-Disposition": f'attachment; filename="{factor}.npy"'})
    return StreamingResponse(factor_io.stream_json(factors, factor, start, stop), media_type="application/json")


PNG: Responses = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
             "description": "A PNG image"}}


@router.get("/components/{component}.png", response_class=FileResponse, responses={**PNG, **QUERY_ERRORS})
def get_component_png(job: JobDep, factors: FactorsDep, settings: SettingsDep, cluster: ClusterDep,
                      component: Annotated[int, Path(ge=0)]) -> FileResponse:
    """A component as an image (for matrices whose rows are images, i.e. with an image_shape)."""
    if component >= factors.n_components:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"component {component} does not exist: the fit has {factors.n_components}")
    path = settings.layout.plot(job.id, f"component_{component:03d}")
    if not path.exists():
        with _query(cluster):
            plots.component_image(factors, component, path)
    return FileResponse(path, media_type="image/png")


@router.get("/rows/{row}.png", response_class=Response, responses={**PNG, **QUERY_ERRORS})
def get_row_png(job: JobDep, factors: FactorsDep, store: StoreDep, settings: SettingsDep,
                row: Annotated[str, Path(min_length=1, max_length=1000, description="A label, or an index")],
                ) -> Response:
    """A row of the job's matrix as a picture (for matrices whose rows are images, i.e. with an image_shape)."""
    matrix = store.get_matrix(job.matrix_id)
    if matrix is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"matrix {job.matrix_id} of this job was deleted")
    if not matrix.image_shape:
        raise Unprocessable(f"matrix {matrix.id} has no image_shape; its rows are not pictures")
    with _query(None):
        index = analysis.resolve_index(factors.row_labels, row, factors.shape[0], "row", factors.row_positions)
        values = open_matrix(settings.layout.path(matrix.path)).read_rows(index, index + 1)
    dense = sp.csr_array(values).toarray() if sp.issparse(values) else np.asarray(values)
    return Response(plots.image_png(dense[0], matrix.image_shape), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/loss.png", response_class=FileResponse, responses={**PNG, **NOT_READY})
def get_loss_png(job: JobDep, factors: FactorsDep, settings: SettingsDep) -> FileResponse:
    """The relative error against the iteration (log scale)."""
    path = settings.layout.plot(job.id, "loss")
    if not path.exists():
        plots.error_curve(factors, path)
    return FileResponse(path, media_type="image/png")


@router.get("/rank", response_model=RankReport, responses=NOT_READY)
def get_rank_report(job: RankJobDep, settings: SettingsDep) -> FileResponse:
    """A rank-selection job's report: per rank the held-out RMSE (mean, std, standard error) and
    training RMSE, every replicate's figures, ``best_k`` and ``one_se_k``."""
    return FileResponse(settings.layout.rank_report(job.id), media_type="application/json")


@router.get("/rank.png", response_class=FileResponse, responses={**PNG, **NOT_READY})
def get_rank_png(job: RankJobDep, settings: SettingsDep) -> FileResponse:
    """Held-out and training RMSE against rank, with the best and one-standard-error ranks."""
    return FileResponse(settings.layout.rank_plot(job.id), media_type="image/png")


@router.get("/components/{component}", response_model=ComponentTop, responses=QUERY_ERRORS)
def get_component(factors: FactorsDep, settings: SettingsDep, cluster: ClusterDep, served: ServedDep,
                  component: Annotated[int, Path(ge=0)],
                  top: Annotated[int, Query(ge=1)] = 10) -> ComponentTop:
    """The rows and columns with the largest weights in a component, with labels."""
    _check_k(settings, "top", top)
    if component >= factors.n_components:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"component {component} does not exist: the fit has {factors.n_components} (0..."
                            f"{factors.n_components - 1})")
    with _query(None if served.indexes.fits(factors, "rows") else cluster):
        result = analysis.top_components(factors, component, top=min(top, max(factors.shape)),
                                         cache=served.indexes)
    return ComponentTop(component=result["component"], rows=result["rows"], columns=result["columns"])


@router.get("/similar", response_model=Similar, responses=QUERY_ERRORS)
async def get_similar(factors: FactorsDep, settings: SettingsDep, cluster: ClusterDep, served: ServedDep,
                      row: Annotated[str, Query(min_length=1, max_length=1000, description="A label, or an index")],
                      k: Annotated[int, Query(ge=1)] = 10, axis: Axis = Axis.rows, least: bool = False) -> Response:
    """The rows (cosine on W) or columns (cosine on H^T) most (or least) similar to one of them.

    Answered from the job's similarity index held in memory (exact, or faiss IVF/HNSW with recall@10
    >= 0.99 for large W; ``least`` is exact), built when the job finished and loaded on first use.
    """
    _check_k(settings, "k", k)
    rows = axis == Axis.rows
    labels = factors.row_labels if rows else factors.col_labels
    n = factors.shape[0] if rows else factors.shape[1]
    with _query(None):
        index = analysis.resolve_index(labels, row, n, axis.value[:-1],
                                       factors.row_positions if rows else factors.col_positions)
    k = min(k, n - 1)
    loaded = served.indexes.loaded(factors, axis.value)
    if loaded is not None and loaded.approximate is not None and not least:
        with _query(None):  # an approximate query (~0.2 ms) is answered on the event loop
            hits = analysis.similar_in(loaded, factors, index, k=k, axis=axis.value)
    else:  # an exact scan, or loading the index: in a worker thread
        hits = await run_in_threadpool(_similar, factors, cluster, served, index, k, axis, least)
    answer = Similar.model_construct(index=index, label=None if labels is None else str(labels[index]), axis=axis,
                                     least=least, hits=hits)
    return Response(answer.model_dump_json(), media_type="application/json")  # built here: no re-validation


def _similar(factors: Factors, cluster: Cluster, served: Served, index: int, k: int, axis: Axis,
             least: bool) -> list[Hit]:
    with _query(None if served.indexes.fits(factors, axis.value) else cluster):  # the index needs no cluster
        return analysis.similar(factors, index, k=k, axis=axis.value, least=least, cache=served.indexes)


@router.get("/recommend", response_model=list[Hit], responses=QUERY_ERRORS)
def get_recommendations(job: JobDep, factors: FactorsDep, store: StoreDep, settings: SettingsDep,
                        cluster: ClusterDep,
                        row: Annotated[str, Query(min_length=1, max_length=1000, description="A label, or an index")],
                        k: Annotated[int, Query(ge=1)] = 10) -> list[Hit]:
    """The best-scoring columns (W_i H) the row has no entry for."""
    _check_k(settings, "k", k)
    matrix = store.get_matrix(job.matrix_id)
    if matrix is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"matrix {job.matrix_id} of this job was deleted")
    with _query(cluster):
        index = analysis.resolve_index(factors.row_labels, row, factors.shape[0], "row", factors.row_positions)
        return analysis.recommend(factors, settings.layout.path(matrix.path), index, k=min(k, factors.shape[1]))


@router.post("/transform", response_model=TransformResult, responses=QUERY_ERRORS)
async def transform(body: TransformRequest, factors: FactorsDep, settings: SettingsDep,
                    cluster: ClusterDep, served: ServedDep) -> Response:
    """Coefficients of new rows (dense, sparse or tag lists) with H fixed, and their nearest rows."""
    if message := settings.limit_error("max_transform_rows", "len(rows)", len(body.rows)):
        raise Unprocessable(message)
    _check_k(settings, "similar_k", body.similar_k)
    loaded = served.indexes.loaded(factors, "rows")
    small = len(body.rows) <= INLINE_ROWS and _entries(body.rows) <= INLINE_ENTRIES and factors.fold_in_ready
    if small and (body.similar_k == 0 or (loaded and loaded.approximate)):
        return _transform(body, factors, cluster, served)  # a few entries and an approximate query: ~0.1 ms
    return await run_in_threadpool(_transform, body, factors, cluster, served)  # also prepares the fold-in


def _entries(rows: list[Any]) -> int:
    """How many values the request's rows hold (what folding them in costs)."""
    return sum(len(r.indices) if isinstance(r, SparseRow) else len(r.labels) if isinstance(r, LabelRow) else len(r)
               for r in rows)


def _transform(body: TransformRequest, factors: Factors, cluster: Cluster, served: Served) -> Response:
    X = _new_rows(body.rows, factors)
    in_process = X.data.nbytes <= IN_PROCESS_BYTES and (body.similar_k == 0 or served.indexes.fits(factors, "rows"))
    with _query(None if in_process else cluster):  # W too large for the index is scanned on the cluster
        W, neighbours = analysis.transform(factors, X, similar_k=min(body.similar_k, factors.shape[0]),
                                           cache=served.indexes)
    answer = TransformResult.model_construct(coefficients=W.tolist(), similar=neighbours)
    return Response(answer.model_dump_json(), media_type="application/json")  # built here: no re-validation


def _new_rows(rows: list[Any], factors: Factors) -> sp.csr_array:
    """The request's rows as a CSR matrix of shape (len(rows), n_cols), validated."""
    n_cols = factors.shape[1]
    labels = factors.col_labels
    position = factors.col_positions or {}
    indptr: list[int] = [0]
    indices: list[int] = []
    values: list[float] = []
    for i, row in enumerate(rows):
        if isinstance(row, SparseRow):
            cols = row.indices
            vals = row.values if row.values is not None else [1.0] * len(cols)
            if len(vals) != len(cols):
                raise Unprocessable(f"row {i}: {len(cols)} indices but {len(vals)} values")
        elif isinstance(row, LabelRow):
            if labels is None:
                raise Unprocessable(f"row {i}: the matrix has no column labels; send indices instead")
            unknown = [label for label in row.labels if label not in position]
            if unknown:
                raise Unprocessable(f"row {i}: unknown column labels {unknown[:5]}")
            cols = sorted({position[label] for label in row.labels})
            vals = [1.0] * len(cols)
        else:
            if len(row) != n_cols:
                raise Unprocessable(f"row {i} has {len(row)} values; the matrix has {n_cols} columns")
            dense = np.asarray(row, dtype=np.float32)
            cols = np.flatnonzero(dense).tolist()
            vals = dense[cols].tolist()
        bad = [c for c in cols if not 0 <= c < n_cols]
        if bad:
            raise Unprocessable(f"row {i}: column indices {bad[:5]} out of range 0..{n_cols - 1}")
        if any(v < 0 for v in vals):
            raise Unprocessable(f"row {i} has negative values; NMF needs non-negative input")
        indices.extend(cols)
        values.extend(vals)
        indptr.append(len(indices))
    X = sp.csr_array((np.asarray(values, dtype=np.float32), np.asarray(indices, dtype=np.int64), indptr),
                     shape=(len(rows), n_cols))
    X.sum_duplicates()
    return X
