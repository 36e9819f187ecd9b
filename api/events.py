"""The events of a job derived from its record: one "progress" event per recorded iteration and a
"state" event when its status changes, with ids that grow as the job goes (SSE ``id:`` lines).

An event's id is ``8 * iteration + code``: progress events have code 0, state events the status's
code below, so a client resuming with ``Last-Event-ID`` gets exactly what came after.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from distnmf.wire import JobEvent, JobRecord, JobStatus

STATE_CODE = {JobStatus.queued: 1, JobStatus.running: 2, JobStatus.cancelling: 3, JobStatus.succeeded: 4,
              JobStatus.failed: 5, JobStatus.cancelled: 6}


def elapsed_seconds(job: JobRecord) -> float | None:
    """Seconds since the job started (to its end once finished)."""
    if job.started_at is None:
        return None
    end = datetime.fromisoformat(job.finished_at) if job.finished_at else datetime.now(UTC)
    return max(0.0, (end - datetime.fromisoformat(job.started_at)).total_seconds())


def progress_events(job: JobRecord, after_iteration: int) -> list[JobEvent]:
    """Progress of iterations past ``after_iteration``; the latest carries elapsed and eta."""
    events = []
    elapsed = elapsed_seconds(job)
    for i, error in enumerate(job.error_history[after_iteration:], start=after_iteration + 1):
        live = i == len(job.error_history) and elapsed is not None
        eta = (elapsed / i * (job.max_iter - i) if live and elapsed is not None and job.status == JobStatus.running
               else None)
        events.append(JobEvent(id=8 * i, kind="progress", status=JobStatus.running, iteration=i,
                               max_iter=job.max_iter, error=float(error), elapsed=elapsed if live else None,
                               eta=eta))
    return events


def state_event(job: JobRecord, sent_iteration: int) -> JobEvent:
    """The job's status as an event. A job that ended comes after all its iterations; a status still
    in force (queued, running, cancelling) is placed after ``sent_iteration``, the last iteration the
    client has, before any newer ones: a fit that ran many iterations between two looks at its
    record was running before them (its state event after them named a later iteration than a
    replay from the record gives)."""
    iteration = job.iteration if job.status.is_terminal else min(job.iteration, sent_iteration)
    return JobEvent(id=8 * iteration + STATE_CODE[job.status], kind="state", status=job.status,
                    iteration=iteration, max_iter=job.max_iter, error=job.error,
                    elapsed=elapsed_seconds(job), message=job.message)


def sse(event: JobEvent) -> str:
    """The event as SSE text: ``id``, ``event`` and a JSON ``data`` line."""
    data = json.dumps(dataclasses.asdict(event))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"
