"""The service's path against scikit-learn: a job as one task on one worker vs block-parallel.

    python bench/service.py [--data data/bench] [--out bench/results] [--only memory|time]

Part ``memory``: for each data set of ``bench/run.py`` part 1, a fresh process fits it in-process
from its store (50 iterations, as the one task does inside a worker) and reports its peak resident
memory above what it held before the fit, next to the bytes of X as float32 plus W and H: the
basis of ``distnmf.one_task.fit_memory`` (the rule that decides when a job runs as one task).

Part ``time``: scikit-learn's ``NMF(solver="cd", init="nndsvda")`` on X in memory against the
real service (uvicorn, SQLite, an embedded 2-worker x 1-thread LocalCluster), two of them side by
side: ``one_task_fits="always"`` (every job as one task) and ``"never"`` (block-parallel); the
service's default, ``"auto"``, picks per job (``distnmf.one_task.fits_one_task``). A job at
defaults (random_state=0) locates the first iteration whose error reaches scikit-learn's final
error; then, in rounds, scikit-learn's fit and a job of exactly that many iterations (``tol=0``)
on each service are timed back to back, the job from the client's submit to its ``succeeded``
event, its recorded final error checked. RATIO = job time / scikit-learn's time in the same
round, median over the rounds (target <= 0.7).
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


def part_time(cases: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Per case: locate the iteration on each service, then ``repeats`` rounds of scikit-learn,
    the one-task job and the block-parallel job back to back (so that the machine's load hits
    all three alike); medians of each."""
    import contextlib

    import distnmf
    from distnmf.client import Client
    from distnmf_api.server import BackgroundServer
    from distnmf_api.settings import Settings

    results: dict[str, Any] = {"load_avg_start": loadavg(), "repeats": repeats, "cases": {}}
    with contextlib.ExitStack() as stack:
        clients = {}
        for mode, setting in (("one_task", "always"), ("block_parallel", "never")):
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"distnmf-bench-{mode}-")))
            server = stack.enter_context(BackgroundServer(Settings(data_dir=data_dir, n_workers=2,
                                                                   one_task_fits=setting)))
            clients[mode] = stack.enter_context(Client(server.url, timeout=3600))
        for case in cases:
            name, k = case["name"], case["k"]
            X = distnmf.open_matrix(case["path"]).to_memory()
            x_norm = frobenius_norm(X)
            entry = results["cases"][name] = {"k": k, "load_avg_before": loadavg(), "runs": []}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target = run_sklearn(X, k, x_norm)["final_rel_error"]
            matrices = {mode: client.upload(X, name=name) for mode, client in clients.items()}
            located = clients["one_task"].submit(matrices["one_task"], n_components=k, random_state=0)
            history = located.wait(progress=False).error_history
            reach = next((i + 1 for i, e in enumerate(history) if e <= target * (1 + REACH_RTOL)), None)
            entry.update(target_rel_error=target, defaults_iterations=len(history), located_iter=reach)
            if reach is None:
                log(f"[{name}] the service's fit at defaults never reaches scikit-learn's {target:.6f}")
                continue
            for _ in range(1 if name == "dense-pixels" else repeats):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run = {"sklearn_s": run_sklearn(X, k, x_norm)["wall_s"]}
                for mode, client in clients.items():
                    start = time.perf_counter()
                    done = client.submit(matrices[mode], n_components=k, random_state=0, max_iter=reach,
                                         tol=0).wait(progress=False)
                    run[f"{mode}_s"] = time.perf_counter() - start
                    run[f"{mode}_rel_error"] = done.error_history[-1]
                    run[f"{mode}_phases"] = done.timings
                entry["runs"].append(run)
                log(f"[{name}] scikit-learn {run['sklearn_s']:.2f}s; {reach} iterations as one task "
                    f"{run['one_task_s']:.2f}s, block-parallel {run['block_parallel_s']:.2f}s")
            for mode in ("one_task", "block_parallel"):
                ratios = sorted(r[f"{mode}_s"] / r["sklearn_s"] for r in entry["runs"])
                entry[f"{mode}_ratio_median"] = ratios[len(ratios) // 2]
                entry[f"{mode}_reached"] = all(r[f"{mode}_rel_error"] <= target * (1 + REACH_RTOL)
                                               for r in entry["runs"])
            entry["load_avg_after"] = loadavg()
            log(f"[{name}] RATIO (median, target <= {TARGET}): one task {entry['one_task_ratio_median']:.2f}, "
                f"block-parallel {entry['block_parallel_ratio_median']:.2f}")
    results["load_avg_end"] = loadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--only", choices=("memory", "time"))
    parser.add_argument("--cases", default="sparse-tfidf,sparse-tags,dense-pixels")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per case (dense-pixels: one)")
    args = parser.parse_args()
    wanted = set(args.cases.split(","))
    cases = [c for c in sklearn_cases(args.data, quick=False) if c["name"] in wanted]
    for case in cases:
        cached_store(case["path"], {"how": case["how"]}, case["make"])
    results: dict[str, Any] = {"git": git_state(), "command": " ".join(sys.argv)}
    if args.only in (None, "memory"):
        results["memory"] = part_memory(cases)
    if args.only in (None, "time"):
        results["time"] = part_time(cases, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"service-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
