"""deploy/: everything this machine can check without a container engine or a cluster manager.

- compose.yaml against the compose specification (check-jsonschema's vendored schema);
- Kubernetes manifests of built-in kinds with kubernetes-validate (strict), and the DaskCluster
  resource against the CRD schema shipped in the dask-kubernetes package (check-jsonschema);
- the Dockerfile with hadolint;
- the SLURM settings, by building the job script dask-jobqueue would submit;
- deploy/local (``distnmf up``) started for real: scheduler, workers and service as separate
  processes, a job submitted through the client, a worker killed midway (the job resumes from
  its checkpoint and ends as an undisturbed fit).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------- static checks


def test_compose_file_follows_the_compose_specification(tmp_path) -> None:
    compose = DEPLOY / "docker" / "compose.yaml"
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", compose)
    assert result.returncode == 0, result.stdout + result.stderr
    spec = yaml.safe_load(compose.read_text())
    assert {"service", "scheduler", "worker", "s3"} <= set(spec["services"])
    assert spec["services"]["worker"]["deploy"]["replicas"] == 2
    assert "8787:8787" in spec["services"]["scheduler"]["ports"]
    # the schema catches mistakes: a misspelt key fails
    broken = tmp_path / "compose.yaml"
    broken.write_text(compose.read_text().replace("depends_on:", "depend_on:", 1))
    assert run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", broken).returncode != 0


def test_kubernetes_manifests_of_built_in_kinds_are_valid(tmp_path) -> None:
    manifests = [DEPLOY / "kubernetes" / "secret.yaml", DEPLOY / "kubernetes" / "service.yaml"]
    result = run(BIN / "kubernetes-validate", "--strict", *manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {doc["kind"] for path in manifests for doc in yaml.safe_load_all(path.read_text())}
    assert kinds == {"Secret", "PersistentVolumeClaim", "Deployment", "Service"}
    broken = tmp_path / "service.yaml"
    broken.write_text((DEPLOY / "kubernetes" / "service.yaml").read_text().replace("containerPort: 8000",
                                                                                    "containerPort: http"))
    assert run(BIN / "kubernetes-validate", "--strict", broken).returncode != 0


def daskcluster_schema() -> dict:
    """The DaskCluster schema of the installed dask-kubernetes operator, as one JSON schema.

    The package ships its CRD as templates whose ``python://`` references are resolved when the
    operator is built; here its own definitions are inlined and the Kubernetes PodSpec /
    ServiceSpec come from kubernetes-validate's bundled (strict) schemas.
    """
    import dask_kubernetes
    import kubernetes_validate

    templates = yaml.safe_load((Path(dask_kubernetes.__file__).parent / "operator" / "customresources"
                                / "templates.yaml").read_text())
    k8s_dir = next(p for p in sorted((Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema").iterdir())
                   if p.name.endswith("-local-strict"))
    k8s = json.loads((k8s_dir / "_definitions.json").read_text())
    text = json.dumps({"$ref": "#/definitions/dask.k8s.api.v1.DaskCluster",
                       "definitions": templates["definitions"], "$defs": k8s["$defs"]})
    text = re.sub(r"python://dask_kubernetes/operator/customresources/templates\.yaml#", "#", text)
    text = re.sub(r"python://k8s_crd_resolver/schemata/k8s-[0-9.]+\.json#/definitions/", "#/$defs/", text)
    text = text.replace("/api/_definitions.json#/$defs/", "#/$defs/")
    assert "python://" not in text
    return json.loads(text)


def test_daskcluster_resource_matches_the_operator_crd(tmp_path) -> None:
    schema = tmp_path / "daskcluster.schema.json"
    schema.write_text(json.dumps(daskcluster_schema()))
    manifest = DEPLOY / "kubernetes" / "daskcluster.yaml"
    result = run(BIN / "check-jsonschema", "--schemafile", schema, manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    resource = yaml.safe_load(manifest.read_text())
    assert resource["apiVersion"] == "kubernetes.dask.org/v1" and resource["kind"] == "DaskCluster"
    worker = resource["spec"]["worker"]["spec"]["containers"][0]
    limit = worker["args"][worker["args"].index("--memory-limit") + 1]
    assert limit.removesuffix("iB") == worker["resources"]["limits"]["memory"].removesuffix("i")  # 4GiB == 4Gi
    broken = tmp_path / "daskcluster.yaml"
    broken.write_text(manifest.read_text().replace("replicas: 4", "replicas: four"))
    assert run(BIN / "check-jsonschema", "--schemafile", schema, broken).returncode != 0


def test_dockerfile_passes_hadolint() -> None:
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    result = run(BIN / "hadolint", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert text.count("FROM ") >= 3 and "uv sync --frozen" in text and "HEALTHCHECK" in text
    assert re.search(r"^USER [1-9][0-9]*", text, re.MULTILINE)  # not root


def test_slurm_settings_build_the_expected_job_script() -> None:
    sys.path.insert(0, str(DEPLOY / "slurm"))
    try:
        import cluster as slurm
    finally:
        sys.path.pop(0)
    import dask.config

    with dask.config.set({}):  # restore the configuration afterwards
        settings = slurm.load_settings()
        from dask_jobqueue import SLURMCluster

        with SLURMCluster(scheduler_options={"host": "127.0.0.1", "port": 0, "dashboard_address": ":0"}) as cluster:
            script = cluster.job_script()
    assert "#SBATCH -n 1" in script and "#SBATCH --cpus-per-task=4" in script and "#SBATCH -t 04:00:00" in script
    assert "--nthreads 1 --memory-limit 4.00GiB --nworkers 4" in script  # 4 single-threaded 4 GiB workers
    assert "--local-directory $TMPDIR" in script and "OPENBLAS_NUM_THREADS=1" in script
    assert settings["distnmf"]["slurm"]["adapt"]["maximum_jobs"] >= settings["distnmf"]["slurm"]["adapt"]["minimum_jobs"]


# --------------------------------------------------------------------------- deploy/local, for real


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def local_deployment(tmp_path_factory):
    """``distnmf up`` with 2 workers, as an operator runs it; stopped with SIGTERM at the end."""
    data_dir = tmp_path_factory.mktemp("local-deploy")
    service, scheduler, dashboard = free_ports(3)
    process = subprocess.Popen([str(BIN / "distnmf"), "up", "--workers", "2", "--data-dir", str(data_dir),
                                "--port", str(service), "--scheduler-port", str(scheduler),
                                "--dashboard-port", str(dashboard), "--memory-limit", "1GiB"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("ready") or process.poll() is not None:
                break
        assert lines and lines[-1].startswith("ready"), "".join(lines)
        yield {"url": f"http://127.0.0.1:{service}", "scheduler": f"tcp://127.0.0.1:{scheduler}",
               "dashboard": f"http://127.0.0.1:{dashboard}", "data_dir": data_dir, "output": lines}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert process.returncode == 0


def test_local_deployment_runs_a_job_through_the_client(local_deployment) -> None:
    import httpx

    from distnmf.client import Client
    from distnmf.factors import open_factors

    assert httpx.get(f"{local_deployment['dashboard']}/health").text == "ok"
    rng = np.random.default_rng(0)
    X = (rng.random((400, 5)) @ rng.random((5, 60))).astype(np.float32)
    with Client(local_deployment["url"]) as client:
        health = client.health()
        assert health["n_workers"] == 2
        job = client.submit(client.upload(X, name="X"), n_components=5, random_state=0, max_iter=30, tol=0)
        info = job.wait(progress=False, timeout=180)
    assert info.status == "succeeded", info
    factors = open_factors(local_deployment["data_dir"] / "factors" / f"{job.id}.zarr")
    assert np.linalg.norm(X - factors.read_W() @ factors.H) / np.linalg.norm(X) < 0.02


def test_local_deployment_survives_a_worker_killed_midway(local_deployment) -> None:
    """SIGKILL one worker process mid-job: the service re-queues the job, it resumes from its
    checkpoint on the remaining worker (and the restarted one) and ends as an undisturbed fit."""
    from distributed import Client as DaskClient

    import distnmf
    from distnmf.client import Client
    from distnmf.factors import open_factors

    rng = np.random.default_rng(1)
    X = (rng.random((3000, 8)) @ rng.random((8, 400))).astype(np.float32)
    params = {"n_components": 8, "random_state": 0, "max_iter": 60, "tol": 0}
    with DaskClient(local_deployment["scheduler"], timeout="20s") as dask_client:
        worker_pids = list(dask_client.run(os.getpid).values())
    with Client(local_deployment["url"]) as client:
        job = client.submit(client.upload(X, name="big"), **params)
        deadline = time.monotonic() + 120
        while (status := job.status()).iteration < 12 and not status.status.is_terminal:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        os.kill(worker_pids[0], signal.SIGKILL)  # the nanny starts a fresh worker process
        info = job.wait(progress=False, timeout=600)
    assert info.status == "succeeded" and info.iteration == 60
    with DaskClient(local_deployment["scheduler"], timeout="20s") as dask_client:
        assert worker_pids[0] not in dask_client.run(os.getpid).values()
    factors = open_factors(local_deployment["data_dir"] / "factors" / f"{job.id}.zarr")
    undisturbed = distnmf.NMF(**params).fit(X)
    np.testing.assert_allclose(factors.H, undisturbed.components_, rtol=1e-3, atol=1e-4)
