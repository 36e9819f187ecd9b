"""Request and response bodies of the REST API (with the examples shown at /docs).

The records also used by the client (matrices, jobs, hits, job status) are the dataclasses
of :mod:`distnmf.wire`; FastAPI validates and documents them like the models here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distnmf.wire import Hit

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Body(BaseModel):
    """Request bodies: unknown fields and NaN/inf are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class MatrixFormat(StrEnum):
    zarr = "zarr"
    npy = "npy"
    npz = "npz"
    mtx = "mtx"
    csv = "csv"


class SolverName(StrEnum):
    hals = "hals"
    mu = "mu"


class BetaLoss(StrEnum):
    frobenius = "frobenius"
    kullback_leibler = "kullback-leibler"
    itakura_saito = "itakura-saito"


class Init(StrEnum):
    nndsvda = "nndsvda"
    nndsvd = "nndsvd"
    nndsvdar = "nndsvdar"
    random = "random"


class Axis(StrEnum):
    rows = "rows"
    columns = "columns"


class FactorFormat(StrEnum):
    json = "json"
    npy = "npy"


class Error(BaseModel):
    """An error as RFC 9457 problem details (served as ``application/problem+json``)."""

    type: str = "about:blank"
    title: str = Field(description="The HTTP status phrase, e.g. Not Found.")
    status: int
    detail: str = Field(description="What was wrong, where, and what to do.")
    instance: str = Field(description="The request path.")


# --------------------------------------------------------------------------- health


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: no scheduler or no worker (jobs wait).")
    problem: str | None = Field(None, description="What is degraded, when it is.")
    version: str
    scheduler: str | None = Field(description="Address of the Dask scheduler the jobs run on; only given to "
                                             "requests with the service's token.")
    n_workers: int
    dashboard_url: str | None
    auth: bool = Field(description="Whether requests need a bearer token.")
    limits: dict[str, int] = Field(description="Upload size, n_components, max_iter, k, download range, ...")
    query_workers: int = Field(0, description="Query worker processes running beside the service's own.")
    query_worker_restarts: int = Field(0, description="Query workers started again after one died.")


# --------------------------------------------------------------------------- matrices


class RegisterMatrix(Body):
    """A matrix already under the data directory: a Zarr store, or a file to ingest to Zarr."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "digits", "path": "incoming/digits.npy", "format": "npy"},
        {"name": "tags", "path": "stores/tags.zarr", "format": "zarr"},
    ]})

    name: str | None = Field(None, min_length=1, max_length=200, description="Defaults to the file name.")
    path: str = Field(min_length=1, max_length=4096, description="Relative to DISTNMF_DATA_DIR.")
    format: MatrixFormat = MatrixFormat.zarr


# --------------------------------------------------------------------------- jobs


class JobParams(Body):
    """NMF parameters, with the engine's defaults (see ``distnmf.NMF``)."""

    n_components: int | None = Field(None, ge=1, description="Rank k of the factorization (kind 'nmf').")
    solver: SolverName = SolverName.hals
    beta_loss: BetaLoss = BetaLoss.frobenius
    init: Init = Init.nndsvda
    max_iter: int = Field(200, ge=1)
    tol: float = Field(1e-4, ge=0)
    random_state: int | None = Field(None, ge=0, le=2**32 - 1)
    alpha_W: float = Field(0.0, ge=0, le=1e6)
    alpha_H: float | Literal["same"] = Field("same", description='A number >= 0, or "same" as alpha_W.')
    l1_ratio: float = Field(0.0, ge=0, le=1)
    checkpoint_every: int = Field(10, ge=1, description="Iterations between checkpoints (resumed after a restart).")
    missing: Literal["zero", "unobserved"] = Field(
        "zero", description='"zero": unstored entries are zeros; "unobserved": only stored entries are data '
                            '(ratings; fits with solver hals and the Frobenius loss).')

    @model_validator(mode="after")
    def _check(self) -> JobParams:
        if self.solver == SolverName.hals and self.beta_loss != BetaLoss.frobenius:
            raise ValueError("solver='hals' supports only beta_loss='frobenius'; use solver='mu'")
        if self.missing == "unobserved" and self.solver != SolverName.hals:
            raise ValueError("missing='unobserved' fits with solver='hals' and beta_loss='frobenius'")
        if isinstance(self.alpha_H, float) and not 0 <= self.alpha_H <= 1e6:
            raise ValueError("alpha_H must be between 0 and 1e6, or 'same'")
        return self


class JobKind(StrEnum):
    nmf = "nmf"
    rank = "rank"


RANK_FIELDS = {"kind", "ks", "test_fraction", "replicates"}
SET_BY_RANK_SELECTION = ("n_components", "missing", "checkpoint_every")


class SubmitJob(JobParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"matrix_id": "3f2a9c0d7e1b4a56", "n_components": 10, "max_iter": 200, "random_state": 0},
        {"matrix_id": "3f2a9c0d7e1b4a56", "kind": "rank", "ks": [2, 4, 8, 16], "test_fraction": 0.05,
         "replicates": 3, "max_iter": 100, "random_state": 0},
        {"matrix_id": "3f2a9c0d7e1b4a56", "job_id": "tags-k20", "n_components": 20, "solver": "mu",
         "beta_loss": "kullback-leibler", "init": "nndsvda", "max_iter": 300, "tol": 1e-4,
         "alpha_W": 0.0, "alpha_H": "same", "l1_ratio": 0.0, "checkpoint_every": 10},
    ]})

    matrix_id: str = Field(min_length=1, max_length=64)
    job_id: str | None = Field(None, pattern=NAME_PATTERN,
                               description="Client-chosen id: resubmitting the same body returns the same job.")
    kind: JobKind = Field(JobKind.nmf, description='"nmf": one factorization of rank n_components; "rank": '
                                                   'cross-validated rank selection over ks (distnmf.select_rank).')
    ks: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, min_length=1, max_length=32, description="Ranks to compare (kind 'rank').")
    test_fraction: float = Field(0.05, gt=0, le=0.5, description="Fraction of the observed entries held out per "
                                                                  "replicate (kind 'rank').")
    replicates: int = Field(3, ge=1, le=20, description="Independent hold-out splits per rank (kind 'rank').")

    @model_validator(mode="after")
    def _check_kind(self) -> SubmitJob:
        if self.kind == JobKind.nmf:
            if self.n_components is None:
                raise ValueError("n_components is required for an 'nmf' job")
            if given := sorted((RANK_FIELDS - {"kind"}) & self.model_fields_set):
                raise ValueError(f"{', '.join(given)} apply to kind='rank' jobs only")
            return self
        if self.ks is None:
            raise ValueError("a 'rank' job needs ks, the ranks to compare, e.g. [2, 4, 8]")
        if given := [name for name in SET_BY_RANK_SELECTION if name in self.model_fields_set]:
            raise ValueError(f"a 'rank' job sets {', '.join(given)} itself (it fits masked NMF of each rank in ks); "
                             "drop it")
        if self.solver != SolverName.hals:
            raise ValueError("a 'rank' job fits masked NMF, with solver='hals' and beta_loss='frobenius'")
        return self

    def ranks(self) -> list[int]:
        """The ranks the job fits: [n_components] for an 'nmf' job, ks for a 'rank' job."""
        if self.kind == JobKind.nmf:
            assert self.n_components is not None  # _check_kind made sure
            return [self.n_components]
        assert self.ks is not None
        return list(self.ks)

    def params(self) -> dict[str, Any]:
        """What the job record stores: an 'nmf' job's NMF parameters (as before rank jobs existed),
        or a 'rank' job's ks, test_fraction, replicates and NMF parameters."""
        if self.kind == JobKind.nmf:
            return self.model_dump(mode="json", exclude={"matrix_id", "job_id", *RANK_FIELDS})
        return self.model_dump(mode="json", exclude={"matrix_id", "job_id", *SET_BY_RANK_SELECTION})


# --------------------------------------------------------------------------- results


class FactorRange(BaseModel):
    factor: Literal["W", "H"]
    start: int
    stop: int
    shape: list[int] = Field(min_length=2, max_length=2)
    data: list[list[float]] = Field(description="W rows start:stop, or H columns start:stop (as k rows).")


class ComponentTop(BaseModel):
    component: int
    rows: list[Hit]
    columns: list[Hit]


class Similar(BaseModel):
    index: int
    label: str | None
    axis: Axis
    least: bool
    hits: list[Hit]


class SparseRow(Body):
    indices: list[int] = Field(description="Column indices of the non-zero entries.")
    values: list[float] | None = Field(None, description="Their values; default 1 for each index.")


class LabelRow(Body):
    labels: list[str] = Field(description="Column labels present in the row (a tag list); each counts 1.")


class TransformRequest(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"rows": [[0.0, 1.0, 0.0, 2.0]], "similar_k": 0},
        {"rows": [{"indices": [3, 17, 42], "values": [1.0, 2.0, 1.0]}], "similar_k": 5},
        {"rows": [{"labels": ["cat", "sunset", "beach"]}], "similar_k": 5},
    ]})

    rows: list[list[float] | SparseRow | LabelRow] = Field(min_length=1)
    similar_k: int = Field(0, ge=0, description="Also return this many most similar stored rows per new row.")


class TransformResult(BaseModel):
    coefficients: list[list[float]] = Field(description="W of the new rows, shape (rows, n_components).")
    similar: list[list[Hit]] = Field(description="Per new row, its nearest stored rows (empty without similar_k).")


class RankRow(BaseModel):
    n_components: int
    test_rmse: float = Field(description="Mean RMSE on the held-out entries over the replicates.")
    test_rmse_std: float
    test_rmse_se: float = Field(description="Standard error of test_rmse (0 with one replicate).")
    train_rmse: float = Field(description="Mean RMSE on the training entries.")
    train_rmse_std: float


class RankReport(BaseModel):
    """A rank-selection job's report (``distnmf.RankReport.to_dict()``)."""

    best_k: int = Field(description="The rank with the lowest mean held-out RMSE.")
    one_se_k: int = Field(description="The smallest rank within one standard error of the best.")
    test_fraction: float
    n_test: list[int] = Field(description="Held-out entries per replicate.")
    table: list[RankRow]
    test_rmse: list[list[float]] = Field(description="Held-out RMSE, shape (len(ks), replicates).")
    train_rmse: list[list[float]] = Field(description="Training RMSE, shape (len(ks), replicates).")
