"""Recall@10 and query cost of the approximate similarity index on W it was not designed on.

    python bench/index_recall.py [--factors data/bench/serving/factors/bench-serving.zarr] [--queries 500]

W sources, each indexed by ``distnmf.index.build`` with the approximate index forced (every size):

- ``debian``: W (k=20) of a fit of the tf-idf of this machine's Debian package descriptions
  (``apt-cache dumpavail``; a real corpus, ~60,000 documents);
- ``digits``: W (k=12) of a fit of scikit-learn's digits (1,797 images);
- ``gamma``: 1,000,000 x 20 i.i.d. Gamma(0.3) entries (dense-ish, no structure);
- ``factors``: W of a stored job (``--factors``, e.g. the serving benchmark's tag data, with masses of
  repeated rows).

Recall counts a hit when its exact cosine reaches the exact 10th best (rows tied with it are equally
right), on random rows that were not the tuning sample. Query cost is per single query, one thread,
against the exact scan of the same vectors.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np

from distnmf import index


def debian_w(k: int = 20) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from distnmf.estimator import NMF

    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    descriptions = [block.split("Description:", 1)[1] for block in dump.split("\n\n") if "Description:" in block]
    X = TfidfVectorizer(max_features=20_000, min_df=3, stop_words="english").fit_transform(descriptions)
    return NMF(n_components=k, max_iter=50, random_state=0).fit_transform(X.astype(np.float32))


def digits_w() -> np.ndarray:
    from sklearn.datasets import load_digits

    from distnmf.estimator import NMF

    return NMF(n_components=12, max_iter=60, random_state=0).fit_transform(load_digits().data.astype(np.float32))


def measure(name: str, W: np.ndarray, n_queries: int) -> dict:
    started = time.perf_counter()
    built = index.build(W, approximate_from=0)
    build_s = time.perf_counter() - started
    rows = np.random.default_rng(12345).choice(len(W), min(n_queries, len(W)), replace=False)
    rows = rows[np.any(built.vectors[rows] != 0, axis=1)]
    exact = built._search_exact(built.vectors[rows], 10, False, rows)
    found = built.search(W[rows], 10, exclude=rows)
    recalls = [np.sum(built.vectors[ids] @ built.vectors[r] >= s[-1] - 1e-6) / 10
               for (ids, _), r, (_, s) in zip(found, rows, exact)]
    one = rows[:100]
    started = time.perf_counter()
    for r in one:
        built.search(W[r:r + 1], 10, exclude=np.array([r]))
    approx_ms = (time.perf_counter() - started) / len(one) * 1e3
    started = time.perf_counter()
    for r in one:
        built._search_exact(built.vectors[r:r + 1], 10, False, np.array([r]))
    exact_ms = (time.perf_counter() - started) / len(one) * 1e3
    distinct = built.approximate.ntotal if built.approximate is not None else len(W)
    result = {"name": name, "shape": W.shape, "distinct": distinct, "kind": built.kind, "depth": built.depth,
              "recall_at_10": float(np.mean(recalls)), "worst_query": float(np.min(recalls)),
              "build_s": build_s, "query_ms": approx_ms, "exact_ms": exact_ms}
    print(f"{name:8s} {W.shape[0]:>9,} x {W.shape[1]:<3d} distinct {distinct:>9,}  {built.kind} depth {built.depth}  "
          f"recall@10 {result['recall_at_10']:.4f} (worst query {result['worst_query']:.1f})  build {build_s:5.1f} s  "
          f"query {approx_ms:.3f} ms vs exact {exact_ms:.3f} ms", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=Path, help="a stored factors store (W is read whole)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--sources", default="digits,debian,gamma,factors")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    for source in args.sources.split(","):
        if source == "digits":
            measure("digits", digits_w(), args.queries)
        elif source == "debian":
            measure("debian", debian_w(), args.queries)
        elif source == "gamma":
            measure("gamma", np.random.default_rng(5).gamma(0.3, 1.0, (1_000_000, 20)).astype(np.float32),
                    args.queries)
        elif source == "factors" and args.factors is not None:
            from distnmf.factors import open_factors

            measure("factors", open_factors(args.factors).read_W(), args.queries)


if __name__ == "__main__":
    main()
