"""The client on its own: typed errors, retries with backoff, async and sync faces, no server imports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest

from distnmf.client import AsyncClient, Client, InvalidRequest, NotFound, ServerError, ServiceUnavailable

JOB = {"id": "j1", "matrix_id": "m1", "status": "queued", "params": {}, "iteration": 0, "max_iter": 10,
       "error": None, "error_history": [], "message": None, "created_at": "2026-01-01T00:00:00Z",
       "started_at": None, "finished_at": None, "dashboard_url": None}


EMPTY_PAGE = {"items": [], "next_cursor": None}


def flaky(failures: list, final: httpx.Response, calls: list) -> httpx.MockTransport:
    """Answer with each of ``failures`` (a status code or an exception) in turn, then ``final``."""

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= len(failures):
            failure = failures[len(calls) - 1]
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure, json={"detail": "try again"})
        return final

    return httpx.MockTransport(handler)


def test_idempotent_calls_retry_5xx_and_connection_errors() -> None:
    calls: list = []
    transport = flaky([503, httpx.ConnectError("refused"), 502], httpx.Response(200, json=EMPTY_PAGE), calls)
    with Client("http://service", transport=transport, backoff=0.01) as client:
        assert client.jobs() == []
    assert len(calls) == 4


def test_submit_is_retried_with_the_same_idempotency_key_or_job_id() -> None:
    calls: list = []
    transport = flaky([500], httpx.Response(202, json=JOB), calls)
    with Client("http://service", transport=transport, backoff=0.01) as client:
        job = client.submit("m1", n_components=3)
    assert job.id == "j1" and len(calls) == 2
    keys = {c.headers["Idempotency-Key"] for c in calls}
    assert len(keys) == 1 and all("job_id" not in json.loads(c.content) for c in calls)
    calls.clear()
    with Client("http://service", transport=flaky([500], httpx.Response(202, json=JOB), calls),
                backoff=0.01) as client:
        client.submit("m1", n_components=3, job_id="mine")
    assert {json.loads(c.content)["job_id"] for c in calls} == {"mine"}


def test_non_idempotent_calls_are_not_retried() -> None:
    calls: list = []
    transport = flaky([503], httpx.Response(201, json={}), calls)
    with Client("http://service", transport=transport, backoff=0.01) as client, pytest.raises(ServerError):
        client.register("a.zarr")
    assert len(calls) == 1


def test_gives_up_after_retries() -> None:
    calls: list = []
    transport = flaky([httpx.ConnectError("refused")] * 10, httpx.Response(200, json=EMPTY_PAGE), calls)
    with Client("http://service", transport=transport, retries=2, backoff=0.01) as client:
        with pytest.raises(ServiceUnavailable, match="refused"):
            client.matrices()
    assert len(calls) == 3


def test_errors_are_typed_and_carry_the_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/jobs"):
            return httpx.Response(422, json={"detail": [{"loc": ["body", "n_components"],
                                                         "msg": "Input should be greater than or equal to 1"}]})
        return httpx.Response(404, json={"detail": "no matrix with id 'x'"})

    with Client("http://service", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(NotFound, match="no matrix with id 'x'") as error:
            client.matrix("x")
        assert error.value.status_code == 404
        with pytest.raises(InvalidRequest, match="body.n_components: Input should be greater"):
            client.submit("x", n_components=0)


def test_async_client() -> None:
    async def main() -> str:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=JOB))
        async with AsyncClient("http://service", transport=transport) as client:
            return (await client.job("j1").status()).status

    assert asyncio.run(main()) == "queued"


def test_client_imports_without_server_or_dask() -> None:
    code = ("import sys; from distnmf.client import Client; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed', 'fastapi', 'uvicorn', 'pydantic_settings', 'zarr')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_interrupting_a_sync_call_cancels_its_request() -> None:
    """Ctrl-C during a blocking call cancels the request on the client's loop and closes its connection."""
    import os
    import signal
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    closed = threading.Event()

    def never_answer() -> None:
        connection, _ = listener.accept()
        accepted.append(connection)
        connection.settimeout(30)
        while connection.recv(65536):  # the request; then b"" once the client closes the connection
            pass
        closed.set()

    server = threading.Thread(target=never_answer, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    interrupt = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    with Client(url, timeout=60, retries=0) as client:
        interrupt.start()
        with pytest.raises(KeyboardInterrupt):
            client.jobs()
        assert closed.wait(10), "the request is still pending on the client's loop"
    server.join(5)
    for connection in accepted:
        connection.close()
    listener.close()
