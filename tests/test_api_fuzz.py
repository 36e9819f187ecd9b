"""Schemathesis fuzzes the OpenAPI schema against the running service: no 5xx, responses match it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings
from distnmf.client import Client

EXAMPLES = 20


@pytest.fixture(scope="module")
def fuzzed_service(dask_cluster, tmp_path_factory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    settings = Settings(data_dir=data_dir, scheduler=dask_cluster.scheduler_address, max_upload_bytes=100_000,
                        max_iter=50, max_components=5)
    with BackgroundServer(settings) as server:
        with Client(server.url) as client:  # one finished job, so result routes see real data too
            matrix = client.upload(np.random.default_rng(0).random((30, 8)), name="m")
            client.submit(matrix, n_components=2, max_iter=5, job_id="fuzz-job").wait(progress=False, timeout=60)
        yield server.url


def test_no_server_errors_and_conforming_responses(fuzzed_service) -> None:
    api = schemathesis.openapi.from_url(f"{fuzzed_service}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 13
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            if case.query and "wait" in case.query:
                case.query["wait"] = 0  # long-polling is tested elsewhere; keep the fuzz quick
            if case.path_parameters and "job_id" in case.path_parameters and case.method != "DELETE":
                case.path_parameters["job_id"] = "fuzz-job"  # fuzz the queries on a real result (kept)
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        fuzz()
