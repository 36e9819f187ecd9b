"""``distnmf demo``: the whole system on this machine, end to end, in about a minute.

Starts the embedded default (a LocalCluster, SQLite and the service on a free loopback
port), ingests scikit-learn's handwritten digits (a real 8x8 pixel corpus) and a synthetic
tag set, submits both factorizations through the Python client, follows their progress,
prints what they found and writes the digits' component grid; then shuts everything down.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

# (digits components, digits iterations, tag items, tags, tag assignments, topics, tags per topic)
FULL = (16, 200, 20_000, 5_000, 300_000, 10, 20)
SMALL = (8, 40, 1_500, 400, 15_000, 5, 10)


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(out_dir: Path, small: bool = False) -> None:
    """Run the demo, writing the service's data and the pictures under ``out_dir``."""
    from sklearn.datasets import load_digits

    from distnmf import plots
    from distnmf.client import Client
    from distnmf.factors import open_factors
    from distnmf.synth import tag_set
    from distnmf_api.server import BackgroundServer
    from distnmf_api.settings import Settings

    k_digits, iter_digits, n_items, n_tags, n_assignments, n_topics, topic_size = SMALL if small else FULL
    out_dir = Path(out_dir)
    data_dir = out_dir / "service"
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    started = time.perf_counter()

    _section("Starting the embedded default: LocalCluster + SQLite + the service on 127.0.0.1")
    settings = Settings(data_dir=data_dir, n_workers=2, max_concurrent_jobs=2)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        health = client.health()
        print(f"service    {server.url}/docs")
        scheduler = health["scheduler"] or "(address given to token holders only)"
        print(f"scheduler  {scheduler}, {health['n_workers']} workers")
        print(f"dashboard  {health['dashboard_url']}")

        _section("Ingesting two data sets")
        digits = load_digits()
        names = [f"#{i:04d}:{d}" for i, d in enumerate(digits.target)]
        digits_matrix = client.upload(digits.data.astype(np.float32), name="digits", row_labels=names,
                                      image_shape=(8, 8))
        print(f"digits     {digits_matrix.shape[0]:,} images of 8x8 pixels (scikit-learn's handwritten digits)")
        tag_store = data_dir / "incoming" / "tags.zarr"
        tag_set(tag_store, n_items=n_items, n_tags=n_tags, n_assignments=n_assignments, n_topics=n_topics,
                topic_size=topic_size, seed=0, overwrite=True, show_progress=False)
        tags_matrix = client.register("incoming/tags.zarr", name="tags")
        print(f"tags       {tags_matrix.shape[0]:,} items x {tags_matrix.shape[1]:,} tags, "
              f"{tags_matrix.nnz:,} tag assignments (synthetic, {n_topics} planted topics)")

        _section("Submitting both jobs through the Python client")
        digits_job = client.submit(digits_matrix, n_components=k_digits, max_iter=iter_digits, random_state=0)
        tags_job = client.submit(tags_matrix, n_components=n_topics, max_iter=100, random_state=0)
        for job in (digits_job, tags_job):
            info = job.wait(progress=True)
            print(f"job {job.id}: {info.status} after {info.iteration} iterations, "
                  f"relative error {info.error:.4f}")

        _section("Top tags of each tag component")
        tops = [[h.label for h in tags_job.top(c, top=6)["columns"]] for c in range(n_topics)]
        for c, labels in enumerate(tops):
            print(f"component {c:2d}: {', '.join(labels)}")

        _section("Related tags (cosine on H^T)")
        shared = {label for labels in tops for label in labels if sum(label in other for other in tops) > 1}
        for labels in tops[:3]:
            tag = next(label for label in labels + [labels[0]] if label not in shared)
            related = tags_job.similar(tag, k=5, axis="columns")
            print(f"{tag:>12} -> {', '.join(f'{h.label} ({h.score:.2f})' for h in related)}")

        _section("Digits most similar to one digit (cosine on W)")
        query = names[0]
        hits = digits_job.similar(query, k=8)
        print(f"{query} -> {', '.join(f'{h.label} ({h.score:.3f})' for h in hits)}")
        same = sum(h.label.endswith(query[-1]) for h in hits)
        print(f"{same} of {len(hits)} are also a {query[-1]}")

        _section("Pictures")
        factors = open_factors(settings.layout.factors(digits_job.id))
        grid = plots.component_grid(factors, out_dir / "digits_components.png")
        loss = plots.error_curve(factors, out_dir / "digits_loss.png")
        print(f"component grid  {grid}")
        print(f"error curve     {loss}")
    _section(f"Done in {time.perf_counter() - started:.1f} s; the cluster and the service are shut down")
