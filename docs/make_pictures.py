"""Regenerate the pictures of the README's Workflows section, and the outputs quoted there.

Runs each seed workflow as the README shows it (synthetic data from :mod:`distnmf.synth`, the
``distnmf`` CLI, a few library calls), copies the pictures to ``docs/images/`` and prints every
command with its output. Everything is seeded, so a rerun gives the same numbers and pictures.

Usage::

    .venv/bin/python docs/make_pictures.py [--work DIR] [--only tags,articles,movies,cats,digits]

Takes a few minutes on 2 cores; ``--work`` keeps the data, stores and results (default: a
temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from distnmf import open_factors, synth
from distnmf.analysis import cooccurring, recommend, similar, top_components, transform

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
MAX_PNG_BYTES = 300 * 1024


def distnmf(*args: object, cwd: Path) -> str:
    """Run ``distnmf ARGS`` in ``cwd`` (as the README does), echo it with its output, return stdout."""
    exe = Path(sys.executable).with_name("distnmf")
    argv = [str(a) for a in args]
    print(f"$ distnmf {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run([str(exe), *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "110", "MPLBACKEND": "Agg"})
    print(done.stdout.rstrip())
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"distnmf {' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def publish(src: Path, name: str) -> Path:
    """Copy a picture into docs/images/ under ``name``, refusing files the README should not carry."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    dest = IMAGES / name
    shutil.copyfile(src, dest)
    size = dest.stat().st_size
    if size > MAX_PNG_BYTES:
        raise SystemExit(f"{dest} is {size / 1024:.0f} KB, over the {MAX_PNG_BYTES // 1024} KB budget")
    print(f"  -> {dest.relative_to(ROOT)} ({size / 1024:.0f} KB)")
    return dest


def save_pngs(rows: np.ndarray, shape: tuple[int, int], folder: Path, names: list[str]) -> None:
    """Rows with values in [0, 1] as 8-bit grayscale PNG files ``folder/name``."""
    for row, name in zip(rows, names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(np.clip(row, 0, 1).reshape(shape) * 255).astype(np.uint8), mode="L").save(path)


def section(title: str) -> None:
    print(f"\n{'=' * 20} {title} {'=' * 20}", flush=True)


# --------------------------------------------------------------------------- workflows


def tags(work: Path) -> None:
    """Seed 0: the full-size tag set -> tf-idf -> NMF topics, related tags, co-occurrence, SVD."""
    section("tags")
    synth.tag_records(work / "tags.jsonl", seed=0)  # 75,000 items x 73,890 tags, ~1.35 M assignments
    distnmf("ingest", "tags", "tags.jsonl", "tags.zarr", "--min-count", "21", "--tfidf", cwd=work)
    distnmf("fit", "tags.zarr", "-k", "20", "--random-state", "0", "--out", "tags.nmf.zarr", cwd=work)
    distnmf("top", "tags.nmf.zarr", "--component", "0", "--top", "6", cwd=work)
    factors = open_factors(work / "tags.nmf.zarr")
    print(">>> top tags of the first 5 topics")
    for c in range(5):
        print([h.label for h in top_components(factors, c, top=6)["columns"]])
    print(">>> related tags (cosine on H^T) and co-occurring tags of 'topic03-07'")
    print([h.label for h in similar(factors, "topic03-07", k=5, axis="columns")])
    print([h.label for h in cooccurring(work / "tags.zarr", "topic03-07", k=5)])
    distnmf("svd", "tags.zarr", "-k", "5", "--random-state", "0", cwd=work)
    distnmf("plot", "tags.nmf.zarr", "--out", "tags-plots", cwd=work)
    publish(work / "tags-plots" / "topics.png", "tags_topics.png")


def articles(work: Path) -> None:
    """Seed 1: 100,000 text lines -> tf-idf -> NMF topics and "similar articles"."""
    section("articles")
    docs = synth.documents(work / "articles.txt", n_docs=100_000, seed=0)  # 10 planted topics
    distnmf("ingest", "text", "articles.txt", "articles.zarr", "--min-df", "5", cwd=work)
    distnmf("fit", "articles.zarr", "-k", "10", "--random-state", "0", "--out", "articles.nmf.zarr", cwd=work)
    distnmf("similar", "articles.nmf.zarr", "--row", "42", "-k", "5", cwd=work)
    factors = open_factors(work / "articles.nmf.zarr")
    hits = similar(factors, "42", k=5)
    print(">>> planted topics of article 42 and of its 5 most similar articles")
    print(docs.doc_topics[41].tolist(), [docs.doc_topics[int(h.label) - 1].tolist() for h in hits])
    distnmf("plot", "articles.nmf.zarr", "--out", "articles-plots", cwd=work)
    publish(work / "articles-plots" / "topics.png", "articles_topics.png")


def movies(work: Path) -> None:
    """Seed 2: a 10,000 x 2,000 rating table -> cross-validated rank -> masked NMF -> recommendations."""
    section("movies")
    table = synth.rating_table(work / "ratings.csv", seed=0)
    print(f"{table.n_ratings:,} ratings")
    distnmf("ingest", "ratings", "ratings.csv", "ratings.zarr", cwd=work)
    distnmf("sweep", "ratings.zarr", "-k", "2,4,8,16", "--cv", "--max-iter", "100", "--random-state", "0",
            "--plot", "rank.png", cwd=work)
    publish(work / "rank.png", "movies_rank.png")
    distnmf("fit", "ratings.zarr", "-k", "8", "--missing", "unobserved", "--alpha", "0.1", "--random-state", "0",
            "--out", "ratings.nmf.zarr", cwd=work)
    factors = open_factors(work / "ratings.nmf.zarr")
    print(">>> recommend(factors, 'ratings.zarr', 'u0042', k=5)")
    for hit in recommend(factors, work / "ratings.zarr", "u0042", k=5):
        print(f"  {hit.label}  {hit.score:.3f}")


def cats(work: Path) -> None:
    """Seed 3: 15,747 64x64 pictures as PNG files -> NMF -> similar and least similar pictures."""
    section("cats")
    corpus = synth.pixel_corpus(work / "corpus.zarr", 15_747, (64, 64), near_duplicates=50, seed=0)
    names = [f"cat_{i:05d}.png" for i in range(corpus.matrix.shape[0])]
    for start in range(0, len(names), 4096):
        save_pngs(corpus.matrix.read_rows(start, start + 4096), (64, 64), work / "cats", names[start:start + 4096])
    distnmf("ingest", "images", "cats", "cats.zarr", "--shape", "64x64", cwd=work)
    distnmf("fit", "cats.zarr", "-k", "16", "--random-state", "0", "--out", "cats.nmf.zarr", cwd=work)
    query = names[corpus.groups[0][0]]
    print(f">>> planted near-duplicates of {query}: {[names[i] for i in corpus.groups[0][1:]]}")
    distnmf("similar", "cats.nmf.zarr", "--row", query, "-k", "6", cwd=work)
    distnmf("similar", "cats.nmf.zarr", "--row", query, "-k", "6", "--least", cwd=work)
    distnmf("plot", "cats.nmf.zarr", "--out", "cats-plots", cwd=work)
    publish(work / "cats-plots" / "components.png", "cats_components.png")
    factors = open_factors(work / "cats.nmf.zarr")
    most, least = similar(factors, query, k=6), similar(factors, query, k=6, least=True)
    search_figure(work / "cats", query, most, least, work / "cats_search.png")
    publish(work / "cats_search.png", "cats_search.png")


def search_figure(folder: Path, query: str, most: list, least: list, path: Path) -> None:
    """One row per query kind: the query, then its hits with their cosine scores."""
    fig = Figure(figsize=(1.3 * (1 + len(most)), 3.0), dpi=100)
    axes = fig.subplots(2, 1 + len(most), squeeze=False)
    for row, (kind, hits) in enumerate((("most similar", most), ("least similar", least))):
        with Image.open(folder / query) as img:
            axes[row, 0].imshow(np.asarray(img), cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(f"query\n{query}", fontsize=7)
        for ax, hit in zip(axes[row, 1:], hits):
            with Image.open(folder / hit.label) as img:
                ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{kind}\n{hit.label} {hit.score:.2f}", fontsize=6)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path)


def digits(work: Path) -> None:
    """Seed 4: scikit-learn's bundled digits (real 8x8 images) as a folder -> latent digits, fold-in."""
    from sklearn.datasets import load_digits

    section("digits")
    data = load_digits()
    pixels = (data.images / 16.0).reshape(len(data.target), 64)
    names = [f"{y}/{i:04d}.png" for i, y in enumerate(data.target)]
    save_pngs(pixels[:1700], (8, 8), work / "digits", names[:1700])  # the last 97 are held out
    distnmf("ingest", "images", "digits", "digits.zarr", "--shape", "8x8", cwd=work)
    distnmf("fit", "digits.zarr", "-k", "16", "--max-iter", "400", "--random-state", "0",
            "--out", "digits.nmf.zarr", cwd=work)
    distnmf("plot", "digits.nmf.zarr", "--out", "digits-plots", "--rows", "4", cwd=work)
    publish(work / "digits-plots" / "components.png", "digits_components.png")
    publish(work / "digits-plots" / "reconstruction.png", "digits_reconstruction.png")
    factors = open_factors(work / "digits.nmf.zarr")
    _, neighbours = transform(factors, pixels[1700:].astype(np.float32), similar_k=1)
    same = np.mean([hits[0].label.split("/")[0] == str(y) for hits, y in zip(neighbours, data.target[1700:])])
    print(f">>> fold-in: {same:.0%} of the 97 held-out digits have a nearest stored digit of their class")


WORKFLOWS: dict[str, Callable[[Path], None]] = {"tags": tags, "articles": articles, "movies": movies,
                                                "cats": cats, "digits": digits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="Keep data and results here.")
    parser.add_argument("--only", default=",".join(WORKFLOWS), help="Comma-separated workflows to run.")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(WORKFLOWS))
    if unknown:
        raise SystemExit(f"unknown workflow(s) {unknown}; choose from {sorted(WORKFLOWS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="distnmf-pictures-"))
    try:
        for name in chosen:
            folder = work / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            WORKFLOWS[name](folder)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
