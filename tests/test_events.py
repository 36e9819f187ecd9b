"""Live job events (server-sent events) from the real service under uvicorn, and the client on them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from distnmf.client import Client
from distnmf.wire import JobRecord, JobStatus
from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings


@pytest.fixture(scope="module")
def service(dask_cluster, tmp_path_factory) -> Iterator[str]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("events"), scheduler=dask_cluster.scheduler_address)
    with BackgroundServer(settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def finished(service):
    """A job that converges long before max_iter, followed through its events while it runs."""
    rng = np.random.default_rng(0)
    X = (rng.gamma(1.0, 1.0, (300, 5)) @ rng.gamma(1.0, 1.0, (5, 40))).astype(np.float32)
    with Client(service) as client:
        job = client.submit(client.upload(X, name="low-rank"), n_components=5, max_iter=500, tol=5e-3,
                            random_state=0)
        events = list(job.events())
        return job.status(), events


def test_events_replay_every_iteration_and_end_with_the_state(finished) -> None:
    record, events = finished
    progress = [e for e in events if e.kind == "progress"]
    assert [e.iteration for e in progress] == list(range(1, record.iteration + 1))
    np.testing.assert_allclose([e.error for e in progress], record.error_history, rtol=1e-6)
    assert events[-1].kind == "state" and events[-1].status == JobStatus.succeeded
    assert events[-1].iteration == record.iteration < record.max_iter  # converged early
    assert [e.id for e in events] == sorted({e.id for e in events})
    live = [e for e in progress if e.eta is not None]
    assert all(e.elapsed > 0 and e.eta >= 0 for e in live)


def test_events_resume_after_last_event_id(service, finished) -> None:
    record, events = finished
    middle = events[len(events) // 2]
    with Client(service) as client:
        resumed = list(client.job(record.id).events(last_event_id=middle.id))
    assert [e.id for e in resumed] == [e.id for e in events if e.id > middle.id]
    with httpx.stream("GET", f"{service}/api/v1/jobs/{record.id}/events",
                      headers={"Last-Event-ID": str(events[-2].id)}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert text.count("event: ") == 1 and f"id: {events[-1].id}" in text


def test_wait_follows_events_and_the_bar_completes_on_early_convergence(service, finished, capsys) -> None:
    record, _ = finished
    with Client(service) as client:
        info = client.job(record.id).wait(progress=True, timeout=60)
    assert info.status == JobStatus.succeeded
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{record.iteration}/{record.iteration}" in bar and "100%" in bar


def test_events_of_an_unknown_job_are_404(service) -> None:
    assert httpx.get(f"{service}/api/v1/jobs/nope/events").status_code == 404


def test_a_status_seen_after_many_iterations_comes_before_them() -> None:
    """A fit may run many iterations between two looks at its record: its "running" state is placed
    after the last iteration the client has (it was running before the new ones), an ended job's
    state after all of its iterations — so a replay from any id gives what a live stream gave."""
    import dataclasses

    from distnmf_api import events

    fields = {f.name for f in dataclasses.fields(JobRecord)}
    running = JobRecord(**{name: None for name in fields} | {
        "id": "j", "status": JobStatus.running, "iteration": 53, "max_iter": 500, "error_history": [0.5] * 53})
    assert (events.state_event(running, 0).id, events.state_event(running, 20).id) == (2, 8 * 20 + 2)
    done = dataclasses.replace(running, status=JobStatus.succeeded)
    assert events.state_event(done, 0).id == 8 * 53 + 4
