"""The service's client, written async on httpx: :class:`AsyncClient` and :class:`AsyncJob`
(``distnmf.client`` gives the synchronous face and the overview)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from distnmf.client_errors import JobCancelled, JobFailed, NotFound, ServiceUnavailable, raise_for_status
from distnmf.wire import Hit, JobEvent, JobRecord, JobStatus, MatrixRecord, from_json

API_PREFIX = "/api/v1"
PAGE = 2**18  # rows of W (columns of H) per download request
LIST_PAGE = 500  # jobs or matrices per list request


# --------------------------------------------------------------------------- records


def _hits(items: list[dict[str, Any]]) -> list[Hit]:
    return [Hit(int(h["index"]), h["label"], float(h["score"])) for h in items]


def _npy_from_bytes(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


# --------------------------------------------------------------------------- async implementation


class AsyncClient:
    """Asynchronous client; use ``async with AsyncClient(url) as client``."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 120.0, retries: int = 4,
                 backoff: float = 0.25, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.AsyncClient(base_url=self.url + API_PREFIX, headers=headers, timeout=timeout,
                                       transport=transport)
        self._page: int | None = None

    async def _download_page(self) -> int:
        """Rows per factor download: ``PAGE``, or less if the service's max_range is lower."""
        if self._page is None:
            self._page = min(PAGE, int((await self.health())["limits"]["max_range"]))
        return self._page

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        """Send one request; retry connection errors and 5xx when the call is idempotent."""
        attempts = self.retries + 1 if idempotent else 1
        attempt = 0
        while True:
            attempt += 1
            last = attempt == attempts
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise ServiceUnavailable(f"{method} {self.url}{API_PREFIX}{path} failed: "
                                             f"{type(exc).__name__}: {exc}") from exc
            else:
                if response.status_code < 500 or last:
                    raise_for_status(response)
                    return response
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))

    async def _get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        return (await self._request("GET", path, idempotent=True, params=query)).json()

    # -- service
    async def health(self) -> dict[str, Any]:
        """Status, scheduler address, number of workers, dashboard URL."""
        return await self._get("/health")

    # -- matrices
    async def upload(self, data: Any, name: str | None = None, *, format: str | None = None,
                     row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                     image_shape: Sequence[int] | None = None) -> MatrixRecord:
        """Upload a matrix: a numpy array, a scipy.sparse matrix, or a .npy/.npz/.mtx/.csv file path.

        Labels are sent along (one per row / column); ``image_shape`` marks rows as images.
        """
        if isinstance(data, (str, Path)):
            path = Path(data)
            filename, content = path.name, path.read_bytes()
        elif hasattr(data, "tocsr"):  # scipy.sparse, saved as .npz
            import scipy.sparse as sp

            buffer = io.BytesIO()
            sp.save_npz(buffer, sp.csr_matrix(data))
            filename, content = "matrix.npz", buffer.getvalue()
        else:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(data, dtype=np.float32), allow_pickle=False)
            filename, content = "matrix.npy", buffer.getvalue()
        files: dict[str, Any] = {"file": (filename, content, "application/octet-stream")}
        for field, labels in (("row_labels", row_labels), ("col_labels", col_labels)):
            if labels is not None:
                files[field] = (f"{field}.txt", "\n".join(str(v) for v in labels).encode(), "text/plain")
        form = {"name": name, "format": format,
                "image_shape": ",".join(str(int(s)) for s in image_shape) if image_shape else None}
        response = await self._request("POST", "/matrices", idempotent=False, files=files,
                                       data={k: v for k, v in form.items() if v is not None})
        return from_json(MatrixRecord, response.json())

    async def register(self, path: str, name: str | None = None, format: str = "zarr") -> MatrixRecord:
        """Register a store (or ingest a file) at ``path``, relative to the service's data directory."""
        body = {"path": str(path), "format": format, **({"name": name} if name else {})}
        return from_json(MatrixRecord, (await self._request("POST", "/matrices", idempotent=False, json=body)).json())

    async def matrices(self) -> list[MatrixRecord]:
        """All registered matrices, oldest first (every page of ``GET /matrices``)."""
        return [from_json(MatrixRecord, m) for m in await self._pages("/matrices")]

    async def _pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """The items of every page of a cursor-paginated list."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self._get(path, **params, limit=LIST_PAGE, cursor=cursor)
            items += page["items"]
            if (cursor := page["next_cursor"]) is None:
                return items

    async def matrix(self, matrix_id: str) -> MatrixRecord:
        return from_json(MatrixRecord, await self._get(f"/matrices/{matrix_id}"))

    async def delete_matrix(self, matrix: str | MatrixRecord) -> None:
        matrix_id = matrix.id if isinstance(matrix, MatrixRecord) else matrix
        await self._request("DELETE", f"/matrices/{matrix_id}", idempotent=True)

    # -- jobs
    async def submit(self, matrix: str | MatrixRecord, n_components: int, *, job_id: str | None = None,
                     **params: Any) -> AsyncJob:
        """Queue an NMF of ``matrix`` (parameters as for ``distnmf.NMF``). Safe to retry: ``job_id``,
        or else a fresh ``Idempotency-Key`` sent with every attempt, names the job."""
        matrix_id = matrix.id if isinstance(matrix, MatrixRecord) else matrix
        body = {"matrix_id": matrix_id, "n_components": n_components, **params}
        if job_id is not None:
            body["job_id"] = job_id
        headers = {} if job_id is not None else {"Idempotency-Key": uuid.uuid4().hex[:16]}
        record = (await self._request("POST", "/jobs", idempotent=True, json=body, headers=headers)).json()
        return AsyncJob(self, record["id"])

    async def select_rank(self, matrix: str | MatrixRecord, ks: Sequence[int], *, test_fraction: float = 0.05,
                          replicates: int = 3, job_id: str | None = None, **params: Any) -> AsyncJob:
        """Queue a cross-validated rank selection of ``matrix`` among ``ks`` (as ``distnmf.select_rank``;
        other parameters as for ``distnmf.NMF``); once it has succeeded, ``job.rank()`` is the report."""
        matrix_id = matrix.id if isinstance(matrix, MatrixRecord) else matrix
        body = {"matrix_id": matrix_id, "kind": "rank", "ks": [int(k) for k in ks], "test_fraction": test_fraction,
                "replicates": replicates, "job_id": job_id or uuid.uuid4().hex[:16], **params}
        record = (await self._request("POST", "/jobs", idempotent=True, json=body)).json()
        return AsyncJob(self, record["id"])

    async def version(self) -> dict[str, Any]:
        """The service's versions: distnmf, the API, Python and faiss (``GET /version``)."""
        return await self._get("/version")

    def job(self, job_id: str) -> AsyncJob:
        """A handle on an existing job."""
        return AsyncJob(self, job_id)

    async def jobs(self, status: str | None = None) -> list[JobRecord]:
        """All jobs in submission order, optionally only those with a status (every page of ``GET /jobs``)."""
        return [from_json(JobRecord, j) for j in await self._pages("/jobs", status=status)]


class AsyncJob:
    """A submitted job; its results are available once ``wait()`` returns."""

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    async def status(self, wait: float = 0, after: int | None = None) -> JobRecord:
        """The job's record; with ``wait``, long-poll until its iteration passes ``after``."""
        return from_json(JobRecord, await self.client._get(f"/jobs/{self.id}", wait=wait or None, after=after))

    async def events(self, last_event_id: int | None = None) -> AsyncIterator[JobEvent]:
        """The job's events as they happen (``GET /jobs/{id}/events``, server-sent events): past
        iterations first, then live ones, ending with the job's final state. A dropped connection is
        resumed after the last event received (``Last-Event-ID``), up to ``retries`` times in a row."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            try:
                async with self.client._http.stream("GET", f"/jobs/{self.id}/events", headers=headers,
                                                    timeout=httpx.Timeout(self.client._http.timeout.connect,
                                                                          read=None)) as response:
                    if not response.is_success:
                        await response.aread()
                        raise_for_status(response)
                    async for event in _parse_sse(response.aiter_lines()):
                        failures = 0
                        last_event_id = event.id
                        yield event
                        if event.kind == "state" and event.status.is_terminal:
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.client.retries:
                    raise ServiceUnavailable(f"the event stream of job {self.id} broke: {exc}") from exc
                await asyncio.sleep(self.client.backoff * 2 ** (failures - 1))

    async def wait(self, progress: bool = True, timeout: float | None = None) -> JobRecord:
        """Wait for the job to finish, following its events, with a progress bar that completes when
        the job does (also when it converges before ``max_iter``); raise JobFailed / JobCancelled."""
        from tqdm.auto import tqdm

        bar = None
        try:
            async with asyncio.timeout(timeout):
                async for event in self.events():
                    if progress and bar is None and not event.status.is_terminal:
                        bar = tqdm(total=event.max_iter, desc=f"job {self.id}", unit="it")
                    if bar is not None:
                        if event.kind == "state" and event.status == JobStatus.succeeded:
                            bar.total = event.iteration
                        bar.n = event.iteration
                        error = f" error={event.error:.5f}" if event.error is not None else ""
                        eta = f" eta={event.eta:.0f}s" if event.eta is not None else ""
                        bar.set_postfix_str(f"{event.status}{error}{eta}", refresh=True)
        except TimeoutError:
            info = await self.status()
            raise TimeoutError(f"job {self.id} is still {info.status} after {timeout} s") from None
        finally:
            if bar is not None:
                bar.close()
        info = await self.status()
        if info.status == JobStatus.cancelled:
            raise JobCancelled(f"job {self.id} was cancelled: {info.message}", info)
        if info.status == JobStatus.failed:
            raise JobFailed(f"job {self.id} failed: {info.message}", info)
        return info

    async def cancel(self) -> JobRecord:
        """Cancel the job at once (a running one shows ``cancelling`` until it has stopped)."""
        return from_json(JobRecord, (await self.client._request("POST", f"/jobs/{self.id}/cancel",
                                                            idempotent=True)).json())

    async def delete(self) -> None:
        """Delete the finished job with its factors (Conflict while it is queued or running)."""
        try:
            await self.client._request("DELETE", f"/jobs/{self.id}", idempotent=True)
        except NotFound:
            pass  # a retried delete that had gone through

    async def _factor(self, factor: str, start: int, stop: int | None) -> np.ndarray:
        """Download a range in pages; the server clips ``stop`` to the factor's length."""
        axis = 0 if factor == "W" else 1
        page = await self.client._download_page()
        pieces = []
        while True:
            requested = page if stop is None else max(0, min(page, stop - start))
            response = await self.client._request("GET", f"/jobs/{self.id}/factors/{factor}", idempotent=True,
                                                  params={"start": start, "stop": start + requested, "format": "npy"})
            pieces.append(_npy_from_bytes(response.content))
            got = pieces[-1].shape[axis]
            start += got
            if got < requested or requested == 0 or (stop is not None and start >= stop):
                return np.concatenate(pieces, axis=axis)

    async def W(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of W, shape (rows, n_components), float32 (via .npy transfer)."""
        return await self._factor("W", start, stop)

    async def H(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Columns ``start:stop`` of H, shape (n_components, columns), float32."""
        return await self._factor("H", start, stop)

    async def top(self, component: int, top: int = 10) -> dict[str, Any]:
        """``{"component": c, "rows": [Hit], "columns": [Hit]}``: the heaviest rows and columns."""
        data = await self.client._get(f"/jobs/{self.id}/components/{component}", top=top)
        return {"component": data["component"], "rows": _hits(data["rows"]), "columns": _hits(data["columns"])}

    async def similar(self, row: str | int, k: int = 10, axis: str = "rows", least: bool = False) -> list[Hit]:
        """The rows (or columns, ``axis="columns"``) most (or ``least``) similar to ``row``."""
        data = await self.client._get(f"/jobs/{self.id}/similar", row=str(row), k=k, axis=axis,
                                      least=str(least).lower())
        return _hits(data["hits"])

    async def recommend(self, row: str | int, k: int = 10) -> list[Hit]:
        """The best-scoring columns the row has no entry for."""
        return _hits(await self.client._get(f"/jobs/{self.id}/recommend", row=str(row), k=k))

    async def transform(self, rows: Any, similar_k: int = 0) -> tuple[np.ndarray, list[list[Hit]]]:
        """Coefficients (r, n_components) of new rows, and their ``similar_k`` nearest stored rows.

        ``rows``: a numpy array (r, n_cols) or (n_cols,), a scipy.sparse matrix, or a list whose
        items are dense lists, ``{"indices": [...], "values": [...]}`` dicts, or lists of column
        labels (tag lists).
        """
        body: dict[str, Any] = {"rows": _rows_payload(rows), "similar_k": similar_k}
        data = (await self.client._request("POST", f"/jobs/{self.id}/transform", idempotent=True,
                                           json=body)).json()
        coefficients = np.asarray(data["coefficients"], dtype=np.float32).reshape(len(body["rows"]), -1)
        return coefficients, [_hits(h) for h in data["similar"]]

    async def component_png(self, component: int) -> bytes:
        """PNG bytes of one component drawn as an image (matrices with an image shape)."""
        return (await self.client._request("GET", f"/jobs/{self.id}/components/{component}.png",
                                           idempotent=True)).content

    async def row_png(self, row: str | int) -> bytes:
        """A row of the job's matrix as a PNG picture (matrices with an image_shape)."""
        return (await self.client._request("GET", f"/jobs/{self.id}/rows/{row}.png", idempotent=True)).content

    async def loss_png(self) -> bytes:
        """PNG bytes of the error curve."""
        return (await self.client._request("GET", f"/jobs/{self.id}/loss.png", idempotent=True)).content

    async def rank(self) -> dict[str, Any]:
        """A rank-selection job's report: ``best_k``, ``one_se_k``, ``table`` (per k: held-out RMSE
        mean, std, standard error; training RMSE), ``test_rmse`` and ``train_rmse`` per replicate."""
        return await self.client._get(f"/jobs/{self.id}/rank")

    async def rank_png(self) -> bytes:
        """PNG bytes of a rank-selection job's held-out and training RMSE against rank."""
        return (await self.client._request("GET", f"/jobs/{self.id}/rank.png", idempotent=True)).content


async def _parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[JobEvent]:
    """JobEvents from server-sent event lines (``id``, ``event``, ``data``; comments skipped)."""
    data: list[str] = []
    async for line in lines:
        if line:
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
            continue
        if data:
            fields = json.loads("\n".join(data))
            fields["status"] = JobStatus(fields["status"])
            yield JobEvent(**fields)
            data = []


def _rows_payload(rows: Any) -> list[Any]:
    if hasattr(rows, "tocsr"):
        csr = rows.tocsr()
        return [{"indices": csr.indices[a:b].tolist(), "values": csr.data[a:b].astype(float).tolist()}
                for a, b in zip(csr.indptr[:-1], csr.indptr[1:])]
    if isinstance(rows, np.ndarray):
        return np.atleast_2d(rows).astype(float).tolist()
    payload = []
    for row in rows:
        if isinstance(row, dict):
            payload.append(row)
        elif len(row) and all(isinstance(v, str) for v in row):
            payload.append({"labels": list(row)})
        else:
            payload.append(np.asarray(row, dtype=float).tolist())
    return payload


