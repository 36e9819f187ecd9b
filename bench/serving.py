"""Serving latency: the real service under uvicorn, on loopback, with 1 and 32 concurrent clients.

    python bench/serving.py [--rows 1000000] [--cols 5000] [--k 20] [--requests 10000] [--data data/bench/serving]

A synthetic tag set of ``rows`` items x ``cols`` tags (distnmf.synth.tag_set, ~6 tags per item) is
registered with the service and factorized by a real job (k components, a few HALS iterations: W is
``rows`` x k, as a finished fit leaves it). Everything in ``--data`` is reused by later runs (the tag
set, the job, its persisted index). The service is then started once per configuration, each a
separate ``distnmf serve`` process:

- ``index``: the default, a faiss index for large W (IVF over the distinct rows; exact below 200,000 rows),
  served by the service process and its query worker processes (one per core but one);
- ``single``: the same index served by the service process alone (``--query-workers 0``);
- ``exact``: the normalised W in memory, scanned exactly per query (DISTNMF_APPROXIMATE_FROM_ROWS huge);
- ``scan``: no index (DISTNMF_INDEX_MEMORY_BYTES=0), W read from Zarr and scanned on the Dask cluster
  per query: the service before the index.

For each, a fixed number of requests of each kind (similar rows, similar columns, one-row transform
with its 10 nearest rows, a component's top 10) is sent by 1 and by 32 concurrent keep-alive clients:
``--requests`` at 32 clients, a fifth at 1, fewer for the slow baselines ``exact`` and ``scan`` (at
~2,500 answers/s a run of 1,000 lasts under half a second right after the warm-up, and its p99 rests
on its 10 slowest; 10,000 give the p99 100 samples and ~4 s of steady state). The clients are
``loadgen``'s raw sockets in 4 processes, requests pre-encoded, so the generator takes little of the
CPU the service needs; its CPU, the service process's and each query worker's are measured and
reported, in cores. p50 / p95 / p99 latency and throughput are reported, with /health's latency
polled every 50 ms meanwhile (does a heavy request block the event loop?). The index's recall@10
against exact answers is measured on 300 random rows. Everything is bounded (request counts, a
deadline per phase) and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import loadgen
import numpy as np
import psutil

JOB_ID = "bench-serving"
PHASE_DEADLINE = 600.0  # seconds: a load phase still running then is stopped and reported as such
FIT_DEADLINE = 3600.0  # seconds for the bench job (fit and index) on a busy 2-core machine
CONFIGS = {
    "index": {},
    "single": {"DISTNMF_QUERY_WORKERS": "0"},
    "exact": {"DISTNMF_APPROXIMATE_FROM_ROWS": str(10**12)},
    "scan": {"DISTNMF_INDEX_MEMORY_BYTES": "0"},
}
KINDS = ("similar_rows", "similar_columns", "transform_1_row", "components")
GENERATOR_PROCESSES = 4  # the 32 clients' connections are spread over this many processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``distnmf serve`` in a child process on a free loopback port."""

    def __init__(self, data_dir: Path, env: dict[str, str], options: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data_dir / f"serve-{self.port}.log", "w")
        environment = {**os.environ, "DISTNMF_DATA_DIR": str(data_dir), "DISTNMF_N_WORKERS": "2", **env}
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "distnmf"), "serve", "--port",
                                         str(self.port), *options], env=environment, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200 and all(
                        listens(worker, self.port) for worker in query_workers(psutil.Process(self.process.pid))):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the service did not start within {timeout} s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def prepare(data_dir: Path, rows: int, cols: int, k: int) -> None:
    """The tag store, registered, and a finished job on it (reused when already there)."""
    from distnmf.synth import tag_set

    store = data_dir / "stores" / "tags.zarr"
    if not store.exists():
        print(f"writing a {rows:,} x {cols:,} tag set ...", flush=True)
        tag_set(store, n_items=rows, n_tags=cols, n_assignments=6 * rows, n_topics=k, topic_size=40, seed=3)
    service = Service(data_dir, {})
    try:
        service.wait_ready()
        with httpx.Client(base_url=f"{service.url}/api/v1", timeout=600) as http:
            job = http.get(f"/jobs/{JOB_ID}")
            if job.status_code == 404:
                matrix = http.post("/matrices", json={"path": "stores/tags.zarr", "name": "bench-tags"})
                matrix.raise_for_status()
                body = {"matrix_id": matrix.json()["id"], "job_id": JOB_ID, "n_components": k, "max_iter": 8,
                        "init": "random", "random_state": 0}
                http.post("/jobs", json=body).raise_for_status()
            if job.status_code == 404 or job.json()["status"] != "succeeded":  # new, or resumed by this start
                print("fitting (and building the similarity index) ...", flush=True)
                started = time.monotonic()
                while (state := http.get(f"/jobs/{JOB_ID}", params={"wait": 30}).json())["status"] in (
                        "queued", "running"):
                    if time.monotonic() - started > FIT_DEADLINE:
                        raise RuntimeError("the bench job did not finish in time")
                if state["status"] != "succeeded":
                    raise RuntimeError(f"the bench job ended {state['status']}: {state['message']}")
                print(f"job done in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        service.stop()


def request_for(kind: str, rng: np.random.Generator, shape: tuple[int, int], k: int, host: str) -> bytes:
    """One request of ``kind`` with random arguments, encoded for ``loadgen``."""
    n_rows, n_cols = shape
    base = f"/api/v1/jobs/{JOB_ID}"
    if kind == "similar_rows":
        return loadgen.encode("GET", f"{base}/similar?row={rng.integers(n_rows)}&k=10", host)
    if kind == "similar_columns":
        return loadgen.encode("GET", f"{base}/similar?row={rng.integers(n_cols)}&k=10&axis=columns", host)
    if kind == "transform_1_row":
        tags = sorted(set(rng.integers(n_cols, size=8).tolist()))
        body = json.dumps({"rows": [{"indices": tags}], "similar_k": 10}).encode()
        return loadgen.encode("POST", f"{base}/transform", host, body)
    return loadgen.encode("GET", f"{base}/components/{rng.integers(k)}?top=10", host)


def load(service: Service, kind: str, clients: int, n_requests: int, shape: tuple[int, int], k: int,
         seed: int) -> dict:
    """``n_requests`` of one kind from ``clients`` concurrent clients; /health polled meanwhile; the
    CPU the service and the generator used, in cores (CPU seconds per second)."""
    host = f"127.0.0.1:{service.port}"
    rng = np.random.default_rng(seed)
    requests = [request_for(kind, rng, shape, k, host) for _ in range(n_requests)]
    address = ("127.0.0.1", service.port)
    server = psutil.Process(service.process.pid)
    workers = query_workers(server)
    before = [cpu_seconds(p) for p in [server, *workers]]
    started = time.perf_counter()
    spread: list[int] = []  # the clients' connections each process serves (the kernel's hash spreads them)
    counting = threading.Thread(target=count_connections, args=([server, *workers], service.port, clients, spread),
                                daemon=True)
    with loadgen.Poller(address, loadgen.encode("GET", "/api/v1/health", host)) as health:
        counting.start()
        result = loadgen.run(address, requests, clients, processes=min(clients, GENERATOR_PROCESSES),
                             timeout=PHASE_DEADLINE)
    counting.join()
    wall = time.perf_counter() - started  # the generator's start-up and warm-up included, as in the CPU times
    cores = [(cpu_seconds(p) - b) / wall for p, b in zip([server, *workers], before)]
    return {"kind": kind, "clients": clients, **loadgen.percentiles(result.latencies),
            "throughput_per_s": len(result.latencies) / result.wall_s, "failures": result.failures,
            "unfinished": result.unfinished, "service_cores": cores[0], "query_worker_cores": cores[1:],
            "connections_per_process": spread,
            "generator_cores": result.cpu_s / result.wall_s, "health": loadgen.percentiles(health.latencies)}


def query_workers(service: psutil.Process) -> list[psutil.Process]:
    """The service's query worker processes (its other children are the Dask cluster's)."""
    return [child for child in service.children() if "distnmf_api.query_workers" in " ".join(child.cmdline())]


def count_connections(processes: list[psutil.Process], port: int, clients: int, out: list[int],
                      timeout: float = 10.0) -> None:
    """Fill ``out`` with the established connections to ``port`` each process serves, once the
    ``clients`` connections (and /health's poller) are all open, or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
                      for c in process.net_connections(kind="tcp")) for process in processes]
        if sum(counts) >= clients + 1:
            break
        time.sleep(0.02)
    out.extend(counts)


def listens(process: psutil.Process, port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections(kind="tcp"))


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def recall_at_10(url: str, data_dir: Path, n_queries: int = 300) -> float:
    """Recall@10 of the service's similar rows against an exact scan of the stored W; a hit counts when
    its exact cosine reaches the exact 10th best (rows tied with it are equally right)."""
    from distnmf import index
    from distnmf.factors import open_factors

    factors = open_factors(data_dir / "factors" / f"{JOB_ID}.zarr")
    exact = index.build(factors.read_W(), approximate_from=10**12)
    rows = np.random.default_rng(11).choice(factors.shape[0], n_queries, replace=False)
    rows = rows[np.any(exact.vectors[rows] != 0, axis=1)]
    tenth = [scores[-1] for _, scores in exact.search(exact.vectors[rows], 10, exclude=rows)]
    found = 0
    with httpx.Client(base_url=f"{url}/api/v1", timeout=60) as http:
        for row, threshold in zip(rows, tenth):
            hits = http.get(f"/jobs/{JOB_ID}/similar", params={"row": str(row), "k": 10}).json()["hits"]
            ids = np.array([h["index"] for h in hits], dtype=np.int64)
            found += int(np.sum(exact.vectors[ids] @ exact.vectors[row] >= threshold - 1e-6))
    return found / (10 * len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=5_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10_000, help="per kind, at 32 clients (1 client: a fifth)")
    parser.add_argument("--exact-requests", type=int, default=1000, help="per kind for the exact-search baseline")
    parser.add_argument("--scan-requests", type=int, default=96, help="per kind for the scan baseline")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--kinds", default=",".join(KINDS), help="request kinds to load, comma-separated")
    parser.add_argument("--no-access-log", action="store_true", help="serve with distnmf serve --no-access-log")
    parser.add_argument("--data", type=Path, default=Path("data/bench/serving"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving.json"))
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    prepare(args.data, args.rows, args.cols, args.k)
    shape = (args.rows, args.cols)
    results: dict[str, Any] = {"rows": args.rows, "cols": args.cols, "k": args.k, "configs": {},
                               "load_average_start": os.getloadavg(), "prepare_s": time.monotonic() - started}
    for name in args.configs.split(","):
        service = Service(args.data, CONFIGS[name], ("--no-access-log",) if args.no_access_log else ())
        try:
            service.wait_ready()
            warm = time.perf_counter()
            for kind in KINDS:  # loads (or builds) the index and the opened factors, in every serving process
                load(service, kind, 1, 1, shape, args.k, seed=0)  # one process builds a missing index first
                warm_up = load(service, kind, 32, 32, shape, args.k, seed=0)
                if warm_up["failures"] or warm_up["unfinished"]:
                    raise RuntimeError(f"[{name}] {kind} failed; see {service.log.name}")
            config: dict[str, Any] = {"warm_up_s": time.perf_counter() - warm, "runs": [],
                                      "query_workers": len(query_workers(psutil.Process(service.process.pid)))}
            if name != "scan":
                config["recall_at_10"] = recall_at_10(service.url, args.data)
                print(f"[{name}] recall@10 {config['recall_at_10']:.4f}", flush=True)
            for clients in (1, 32):
                n = {"scan": args.scan_requests, "exact": args.exact_requests}.get(name, args.requests)
                n = max(clients, n // 5 if clients == 1 else n)
                for seed, kind in enumerate(KINDS, start=1):
                    if kind not in args.kinds.split(","):
                        continue
                    run = load(service, kind, clients, n, shape, args.k, seed)
                    config["runs"].append(run)
                    workers = " ".join(f"{c:.2f}" for c in run["query_worker_cores"]) or "-"
                    spread = "/".join(str(n) for n in run["connections_per_process"])
                    print(f"[{name}] {kind:16s} {clients:2d} clients: p50 {run['p50_ms']:7.1f}  p95 "
                          f"{run['p95_ms']:7.1f}  p99 {run['p99_ms']:7.1f} ms  {run['throughput_per_s']:7.1f}/s  "
                          f"health p99 {run['health']['p99_ms']:6.1f} ms  cores: service "
                          f"{run['service_cores']:.2f} query workers {workers} generator "
                          f"{run['generator_cores']:.2f}  connections {spread}  failures {run['failures']} "
                          f"unfinished {run['unfinished']}", flush=True)
            results["configs"][name] = config
        finally:
            service.stop()
    results["load_average_end"] = os.getloadavg()
    results["total_s"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}; load average {results['load_average_start']} at the start, "
          f"{results['load_average_end']} at the end; {results['total_s']:.0f} s in all")


if __name__ == "__main__":
    main()
