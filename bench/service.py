"""The service's path against scikit-learn: a job as one task on one worker vs block-parallel.

    python bench/service.py [--data data/bench] [--out bench/results] [--only memory|time]

Part ``memory``: for each data set of ``bench/run.py`` part 1, a fresh process fits it in-process
from its store (50 iterations, as the one task does inside a worker) and reports its peak resident
memory above what it held before the fit, next to the bytes of X as float32 plus W and H: the
basis of ``distnmf.one_task.fit_memory`` (the rule that decides when a job runs as one task).

Part ``time``: scikit-learn's ``NMF(solver="cd", init="nndsvda")`` on X in memory, then the
real service (uvicorn, SQLite, an embedded 2-worker x 1-thread LocalCluster) started twice,
with ``one_task_fits="always"`` (every job as one task) and ``"never"`` (block-parallel); the
service's default, ``"auto"``, picks per job (``distnmf.one_task.fits_one_task``). A job at defaults (random_state=0) locates the first
iteration whose error reaches scikit-learn's final error; a second job of exactly that many
iterations (``tol=0``) is then timed from the client's submit to its ``succeeded`` event, and
its recorded final error checked. RATIO = that time / scikit-learn's fit time (target <= 0.7).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from run import REACH_RTOL, cached_store, frobenius_norm, git_state, loadavg, log, run_sklearn, sklearn_cases  # noqa: E402

TARGET = 0.7

MEMORY_PROBE = """
import json, sys, threading, time, psutil, numpy as np
import distnmf
path, k = sys.argv[1], int(sys.argv[2])
matrix = distnmf.open_matrix(path)
process = psutil.Process()
import scipy.sparse as sp  # compile the kernels (dense and sparse) before the baseline
small = np.random.default_rng(0).random((60, 40)) * (np.random.default_rng(1).random((60, 40)) < 0.3)
for X in (small, sp.csr_array(small)):
    distnmf.NMF(n_components=k if k < 40 else 5, max_iter=2, random_state=0).fit(X)
before, peak, done = process.memory_info().rss, [0], threading.Event()
def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], process.memory_info().rss)
sampler = threading.Thread(target=sample); sampler.start()
distnmf.NMF(n_components=k, random_state=0, max_iter=50).fit(path)
done.set(); sampler.join()
print(json.dumps({"before": before, "peak": max(peak[0], process.memory_info().rss)}))
"""


def part_memory(cases: list[dict[str, Any]]) -> dict[str, Any]:
    import distnmf
    from distnmf.one_task import fit_memory

    out = {}
    for case in cases:
        matrix = distnmf.open_matrix(case["path"])
        probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(case["path"]), str(case["k"])],
                               capture_output=True, text=True, check=True)
        rss = json.loads(probe.stdout.strip().splitlines()[-1])
        m, n = matrix.shape
        x_bytes = matrix.nnz * 8 + (m + 1) * 8 if matrix.is_sparse else m * n * 4
        rule, grew = fit_memory(matrix, case["k"]), rss["peak"] - rss["before"]
        out[case["name"]] = {"x_bytes": x_bytes, "w_h_bytes": 4 * case["k"] * (m + n), "peak_rss_growth_bytes": grew,
                             "rule_bytes": rule}
        log(f"[{case['name']}] X {x_bytes / 2**20:.1f} MiB, W+H {4 * case['k'] * (m + n) / 2**20:.1f} MiB; fit's "
            f"peak RSS growth {grew / 2**20:.1f} MiB; the rule says {rule / 2**20:.1f} MiB")
    return out


def service_job_times(cases: list[dict[str, Any]], targets: dict[str, float], one_task: bool) -> dict[str, Any]:
    """The service's time to reach each case's target error, every job as one task or none."""
    import distnmf
    from distnmf.client import Client
    from distnmf_api.server import BackgroundServer
    from distnmf_api.settings import Settings

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="distnmf-bench-service-") as data_dir:
        settings = Settings(data_dir=Path(data_dir), n_workers=2, one_task_fits="always" if one_task else "never")
        with BackgroundServer(settings) as server, Client(server.url, timeout=600) as client:
            for case in cases:
                name, k, target = case["name"], case["k"], targets[case["name"]]
                matrix = client.upload(distnmf.open_matrix(case["path"]).to_memory(), name=name)
                warm = client.submit(matrix, n_components=k, max_iter=2, tol=0, random_state=0)
                warm.wait(progress=False)  # the matrix is read once (the page cache warm, as for scikit-learn)
                located = client.submit(matrix, n_components=k, random_state=0).wait(progress=False)
                reach = next((i + 1 for i, e in enumerate(located.error_history)
                              if e <= target * (1 + REACH_RTOL)), None)
                entry = out[name] = {"defaults_iterations": located.iteration,
                                     "defaults_final_rel_error": located.error_history[-1], "located_iter": reach}
                if reach is None:
                    log(f"  [{name}] service ({'one task' if one_task else 'block-parallel'}): never reached")
                    continue
                start = time.perf_counter()
                timed = client.submit(matrix, n_components=k, random_state=0, max_iter=reach, tol=0)
                done = timed.wait(progress=False)
                entry["time_to_reach_s"] = time.perf_counter() - start
                entry["replay_rel_error"] = done.error_history[-1]
                entry["reached"] = bool(done.error_history[-1] <= target * (1 + REACH_RTOL))
                log(f"  [{name}] service ({'one task' if one_task else 'block-parallel'}): {reach} iterations "
                    f"in {entry['time_to_reach_s']:.2f}s, error {entry['replay_rel_error']:.6f}")
    return out


def part_time(cases: list[dict[str, Any]]) -> dict[str, Any]:
    import distnmf

    results: dict[str, Any] = {"load_avg_start": loadavg(), "cases": {}}
    targets = {}
    for case in cases:
        X = distnmf.open_matrix(case["path"]).to_memory()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk = run_sklearn(X, case["k"], frobenius_norm(X))
        targets[case["name"]] = sk["final_rel_error"]
        results["cases"][case["name"]] = {"sklearn": sk}
        log(f"[{case['name']}] scikit-learn: {sk['wall_s']:.2f}s, {sk['n_iter']} it, error {sk['final_rel_error']:.6f}")
    for one_task in (True, False):
        mode = "one_task" if one_task else "block_parallel"
        for name, entry in service_job_times(cases, targets, one_task).items():
            sk_wall = results["cases"][name]["sklearn"]["wall_s"]
            if "time_to_reach_s" in entry:
                entry["ratio_time_to_reach"] = entry["time_to_reach_s"] / sk_wall
            results["cases"][name][mode] = entry
    results["load_avg_end"] = loadavg()
    for name, entry in results["cases"].items():
        ratios = [f"{mode} {entry[mode].get('ratio_time_to_reach', float('nan')):.2f}"
                  for mode in ("one_task", "block_parallel")]
        log(f"[{name}] RATIO (target <= {TARGET}): {', '.join(ratios)}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--only", choices=("memory", "time"))
    parser.add_argument("--cases", default="sparse-tfidf,sparse-tags,dense-pixels")
    args = parser.parse_args()
    wanted = set(args.cases.split(","))
    cases = [c for c in sklearn_cases(args.data, quick=False) if c["name"] in wanted]
    for case in cases:
        cached_store(case["path"], {"how": case["how"]}, case["make"])
    results: dict[str, Any] = {"git": git_state(), "command": " ".join(sys.argv)}
    if args.only in (None, "memory"):
        results["memory"] = part_memory(cases)
    if args.only in (None, "time"):
        results["time"] = part_time(cases)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"service-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
