"""End to end, one test per seed workflow, at small scale: the steps a user would run, from the
data they have (files on disk) to the answers they want, through the library and the CLI.

- tags: JSON Lines tag records -> tf-idf store -> NMF topics, related tags, co-occurrence, SVD;
- topics + similar articles: text lines -> tf-idf -> NMF (CLI) -> topics, similar documents;
- movie recommender: rating CSV -> rank sweep (CLI) -> NMF -> recommendations vs popularity;
- cat-picture search: PNG folder -> NMF (CLI) -> near-duplicate search, least similar, pictures;
- latent faces: scikit-learn's bundled digits as a PNG folder -> NMF -> component images,
  reconstruction error, fold-in of held-out digits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr
from typer.testing import CliRunner

from distnmf import factorize, open_factors, open_matrix, synth
from distnmf.analysis import cooccurring, recommend, similar, top_components, transform
from distnmf.cli import app
from distnmf.ingest import ingest_images, ingest_tags, seed_idf
from distnmf.init import truncated_svd
from distnmf.plots import component_images

runner = CliRunner()


def cli(*args: object) -> str:
    """Run ``distnmf ARGS`` and return its stdout; fail the test with its output on a non-zero exit."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"distnmf {' '.join(map(str, args))} exited {result.exit_code}:\n" \
                                  f"{result.stdout}\n{result.stderr}\n{result.exception!r}"
    return result.stdout


def best_overlap(planted: set[str], components: list[set[str]]) -> tuple[int, float]:
    """The component whose top labels share most with ``planted``, and the shared fraction."""
    overlaps = [len(planted & c) / len(planted) for c in components]
    best = int(np.argmax(overlaps))
    return best, overlaps[best]


# --------------------------------------------------------------------------- tags (seed 0)


def test_tag_workflow_topics_related_tags_cooccurrence_svd(tmp_path: Path, dask_client) -> None:
    n_topics, topic_size = 8, 12
    planted = synth.tag_records(tmp_path / "tags.jsonl", n_items=4000, n_tags=3000, n_assignments=40_000,
                                n_topics=n_topics, topic_size=topic_size, seed=1)
    report = ingest_tags(planted.path, tmp_path / "tags.zarr", min_count=5, tfidf=True)
    X = report.matrix
    tags = X.col_labels
    counts = report.details["tag_counts"]
    assert counts.min() >= 5 and X.shape[0] == 4000
    # entries are the seed's idf ln(n_items / (df + 0.1)) of their tag
    dense = X.to_memory().toarray()
    idf = seed_idf(counts, X.shape[0])
    rows, cols = np.nonzero(dense)
    np.testing.assert_allclose(dense[rows, cols], idf[cols], rtol=1e-6)

    factors = factorize(X, tmp_path / "tags.nmf.zarr", n_components=n_topics, random_state=0)
    assert factors.shape == X.shape and factors.n_components == n_topics

    # every planted topic is one component: >= 80% of its tags among that component's top tags
    tops = [{h.label for h in top_components(factors, c, top=topic_size)["columns"]} for c in range(n_topics)]
    topic_sets = [set(planted.tag_labels[t]) for t in planted.topic_tags]
    matched = []
    for topic in topic_sets:
        component, overlap = best_overlap(topic, tops)
        assert overlap >= 0.8, f"planted topic {sorted(topic)[:3]}... best component overlap {overlap:.0%}"
        matched.append(component)
    assert len(set(matched)) == n_topics, "two planted topics came out as one component"

    topic_of = {tag: k for k, topic in enumerate(topic_sets) for tag in topic}
    for k, topic in enumerate(topic_sets):
        query = sorted(topic)[0]
        # related tags (cosine on H^T): the planted neighbours of the same topic
        related = similar(factors, query, k=5, axis="columns")
        assert [topic_of.get(h.label) for h in related] == [k] * 5, (query, related)
        # co-occurrence (X^T x_c without forming X^T X): same-topic tags lead
        together = cooccurring(X, query, k=5)
        assert [topic_of.get(h.label) for h in together] == [k] * 5, (query, together)
        assert query not in {h.label for h in together}

    # co-occurrence scores are exactly X^T x_c
    c = int(np.flatnonzero(tags == sorted(topic_sets[0])[0])[0])
    exact = dense.T.astype(np.float64) @ dense[:, c]
    for hit in cooccurring(X, int(c), k=5):
        assert hit.score == pytest.approx(exact[hit.index], rel=1e-5)

    # truncated SVD of the stored matrix agrees with numpy's on the same matrix
    _, S, _ = truncated_svd(X, 5, random_state=0)
    np.testing.assert_allclose(S, np.linalg.svd(dense, compute_uv=False)[:5], rtol=1e-3)


# --------------------------------------------------------------------------- topics + similar articles (seed 1)


def test_topics_and_similar_articles_through_the_cli(tmp_path: Path) -> None:
    n_topics = 6
    docs = synth.documents(tmp_path / "articles.txt", n_docs=2000, n_topics=n_topics, words_per_topic=20,
                           n_background=200, seed=2)
    store, results = tmp_path / "articles.zarr", tmp_path / "articles.nmf.zarr"
    summary = cli("ingest", "text", docs.path, store, "--min-df", "3")
    assert "2,000 x" in summary
    cli("fit", store, "-k", n_topics, "--random-state", "0", "--out", results)

    topics = json.loads(cli("top", results, "--top", "10", "--json"))
    assert len(topics) == n_topics
    words = [{h["label"] for h in t["columns"]} for t in topics]
    matched = []
    for planted in docs.topic_words:
        component, _ = best_overlap(set(planted), words)
        # a component's top 10 words are all words of one planted topic
        assert words[component] <= set(planted), (component, words[component])
        matched.append(component)
    assert sorted(matched) == list(range(n_topics))

    # "similar articles": rows are line numbers (1-based); single-topic articles find their topic
    single = np.flatnonzero(docs.doc_topics[:, 0] == docs.doc_topics[:, 1])[:5]
    for i in single:
        hits = json.loads(cli("similar", results, "--row", str(i + 1), "-k", "5", "--json"))
        assert len(hits) == 5 and str(i + 1) not in {h["label"] for h in hits}
        topic = docs.doc_topics[i, 0]
        assert all(topic in docs.doc_topics[int(h["label"]) - 1] for h in hits), (i, hits)


# --------------------------------------------------------------------------- movie recommender (seed 2)


def test_movie_recommender_sweep_and_recommendations(tmp_path: Path) -> None:
    table = synth.rating_table(tmp_path / "all.csv", n_users=1000, n_items=200, n_components=4, density=0.3,
                               seed=3)
    header, *lines = table.path.read_text().splitlines()
    held_out = np.random.default_rng(0).random(len(lines)) < 0.2
    train = tmp_path / "ratings.csv"
    train.write_text("\n".join([header, *(l for l, h in zip(lines, held_out) if not h)]) + "\n")
    test = defaultdict(dict)
    for line in (l for l, h in zip(lines, held_out) if h):
        user, item, rating = line.split(",")
        test[user][item] = float(rating)

    store = tmp_path / "ratings.zarr"
    cli("ingest", "ratings", train, store)
    sweep = json.loads(cli("sweep", store, "-k", "2,4,8", "--cv", "--replicates", "2", "--random-state", "0",
                           "--max-iter", "100", "--json", "--plot", tmp_path / "rank.png"))
    assert [r["n_components"] for r in sweep["table"]] == [2, 4, 8]
    train = [r["train_rmse"] for r in sweep["table"]]
    assert train[0] > train[1] > train[2], train  # training error always falls with k ...
    held_out_rmse = [r["test_rmse"] for r in sweep["table"]]
    assert held_out_rmse[0] > held_out_rmse[1] and sweep["best_k"] in (4, 8), sweep["table"]  # ... held-out error needs k >= 4
    assert (tmp_path / "rank.png").stat().st_size > 0

    matrix = open_matrix(store)
    factors = factorize(matrix, tmp_path / "ratings.nmf.zarr", n_components=sweep["best_k"], random_state=0,
                        missing="unobserved", alpha_W=0.1)
    X = matrix.to_memory()
    users, items = list(matrix.row_labels), list(matrix.col_labels)
    popularity = np.asarray((X > 0).sum(axis=0)).ravel()  # how many users rated each film

    mean_rating = np.asarray(X.sum(axis=0)).ravel() / np.maximum(popularity, 1)
    W, H = factors.read_W(), factors.H
    model_hits, popular_hits, best_rated_hits = [], [], []
    for u, user in enumerate(users[:300]):
        seen = set(X[[u]].indices.tolist())
        recs = recommend(factors, matrix, user, k=20)
        # only films the user has not rated, best first
        assert len(recs) == 20 and not seen & {h.index for h in recs}
        assert all(a.score >= b.score for a, b in zip(recs, recs[1:]))
        unseen = np.array([j for j in range(len(items)) if j not in seen])
        popular = unseen[np.argsort(-popularity[unseen], kind="stable")[:20]]
        best_rated = unseen[np.argsort(-mean_rating[unseen], kind="stable")[:20]]
        model_hits += [test[user][h.label] for h in recs if h.label in test[user]]
        popular_hits += [test[user][items[j]] for j in popular if items[j] in test[user]]
        best_rated_hits += [test[user][items[j]] for j in best_rated if items[j] in test[user]]
        # scores are the masked model's predicted ratings (1-5 star scale, at times beyond 5)
        np.testing.assert_allclose([h.score for h in recs], W[u] @ H[:, [h.index for h in recs]], rtol=1e-5)
    # the held-out ratings of recommended films beat those of the most popular and of the
    # best-rated unseen films
    assert len(model_hits) > 200 and len(popular_hits) > 200 and len(best_rated_hits) > 100
    assert np.mean(model_hits) > np.mean(popular_hits) + 0.1, (np.mean(model_hits), np.mean(popular_hits))
    assert np.mean(model_hits) > np.mean(best_rated_hits) + 0.1, (np.mean(model_hits), np.mean(best_rated_hits))

    # per user, the model's scores of held-out films rank their true ratings better than popularity
    col = {label: j for j, label in enumerate(items)}
    model_rho, popular_rho = [], []
    for u, user in enumerate(users):
        pairs = [(col[i], r) for i, r in test[user].items() if i in col]
        truth = np.array([r for _, r in pairs])
        if len(pairs) < 5 or truth.std() == 0:
            continue
        js = [j for j, _ in pairs]
        model_rho.append(spearmanr(W[u] @ H[:, js], truth)[0])
        popular_rho.append(spearmanr(popularity[js], truth)[0])
    assert np.nanmean(model_rho) > np.nanmean(popular_rho) + 0.1, (np.nanmean(model_rho), np.nanmean(popular_rho))


# --------------------------------------------------------------------------- cat-picture search (seed 3)


def write_png_folder(rows: np.ndarray, shape: tuple[int, int], folder: Path, names: list[str]) -> None:
    """Save rows with values in [0, 1] as 8-bit grayscale PNGs ``folder/name``."""
    for row, name in zip(rows, names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(row.reshape(shape) * 255).astype(np.uint8), mode="L").save(path)


def test_cat_picture_search_through_the_cli(tmp_path: Path) -> None:
    corpus = synth.pixel_corpus(tmp_path / "corpus.zarr", 300, (64, 64), n_parts=12, near_duplicates=8,
                                group_size=3, seed=4)
    folder = tmp_path / "cats"
    names = [f"cat_{i:04d}.png" for i in range(300)]
    write_png_folder(corpus.matrix.to_memory(), (64, 64), folder, names)
    (folder / "notes.txt").write_text("not a cat")

    store, results = tmp_path / "cats.zarr", tmp_path / "cats.nmf.zarr"
    summary = cli("ingest", "images", folder, store, "--shape", "64x64")
    assert "300 x 4,096" in summary and "Skipped 1" in summary and "notes.txt" in summary
    assert open_matrix(store).image_shape == (64, 64)
    cli("fit", store, "-k", 12, "--random-state", "0", "--out", results)

    # the two most similar cats to a near-duplicate are the rest of its group, for every group
    factors = open_factors(results)
    for group in corpus.groups:
        for member in group:
            others = {names[o] for o in group if o != member}
            assert {h.label for h in similar(factors, names[member], k=2)} == others
    group = corpus.groups[0]
    hits = json.loads(cli("similar", results, "--row", names[group[0]], "-k", "2", "--json"))
    assert {h["label"] for h in hits} == {names[o] for o in group[1:]}
    assert all(h["score"] > 0.99 for h in hits)

    # least similar: ascending scores, all below the most similar, none of the group
    least = json.loads(cli("similar", results, "--row", names[group[0]], "-k", "8", "--least", "--json"))
    scores = [h["score"] for h in least]
    assert scores == sorted(scores) and scores[-1] < 0.9
    assert not {h["label"] for h in least} & {names[o] for o in group}

    # pictures: one PNG per component, the image shape times an integer scale
    plots = tmp_path / "plots"
    cli("plot", results, "--out", plots)
    pngs = sorted((plots / "components").glob("*.png"))
    assert len(pngs) == 12
    for png in pngs:
        with Image.open(png) as img:
            w, h = img.size
            assert w == h and w % 64 == 0
    for path in component_images(factors, tmp_path / "native", scale=1):
        with Image.open(path) as img:
            assert img.size == (64, 64)
    assert (plots / "components.png").exists() and (plots / "reconstruction.png").exists()


# --------------------------------------------------------------------------- latent faces (seed 4)


def test_latent_faces_of_real_digits_folder(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()  # bundled with scikit-learn: 1,797 real 8x8 images, no download
    held = np.random.default_rng(0).random(len(digits.target)) < 0.1
    pixels = (digits.images / 16.0).reshape(len(digits.target), 64)
    names = [f"{y}/{i:04d}.png" for i, y in enumerate(digits.target)]
    folder = tmp_path / "digits"
    write_png_folder(pixels[~held], (8, 8), folder, [n for n, h in zip(names, held) if not h])

    report = ingest_images(folder, tmp_path / "digits.zarr", image_shape=(8, 8))
    X = report.matrix
    assert X.shape == (int((~held).sum()), 64) and X.image_shape == (8, 8) and report.n_skipped == 0
    # PNG round trip: 8-bit quantisation only
    order = [names.index(label) for label in X.row_labels]
    np.testing.assert_allclose(X.to_memory(), pixels[order], atol=1 / 255 + 1e-6)

    factors = factorize(X, tmp_path / "digits.nmf.zarr", n_components=16, random_state=0, max_iter=400)
    relative = factors.error_history[-1]
    assert relative < 0.3, f"relative reconstruction error {relative:.3f}"
    W, H = factors.read_W(), factors.H
    dense = X.to_memory()
    assert np.linalg.norm(dense - W @ H) / np.linalg.norm(dense) == pytest.approx(relative, rel=1e-3)

    paths = component_images(factors, tmp_path / "latent", scale=1)
    assert len(paths) == 16
    for path in paths:
        with Image.open(path) as img:
            assert img.size == (8, 8)

    # fold-in of held-out digits: their nearest stored digit is of the same class for most
    _, neighbours = transform(factors, pixels[held].astype(np.float32), similar_k=1)
    same = [hits[0].label.split("/")[0] == str(y) for hits, y in zip(neighbours, digits.target[held])]
    assert np.mean(same) >= 0.85, f"{np.mean(same):.0%} of held-out digits found their class"
