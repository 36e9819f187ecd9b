"""Synthetic generators: determinism, shapes, sizes, and that the planted structure is there."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF

from distnmf import synth
from distnmf.ingest import ingest_ratings, ingest_tags, ingest_text

SMALL_TAGS = dict(n_items=3000, n_tags=2000, n_assignments=45_000, n_topics=5, topic_size=20)


def test_tag_set_is_deterministic_with_planted_topics(tmp_path):
    a = synth.tag_set(tmp_path / "a.zarr", **SMALL_TAGS, seed=3)
    b = synth.tag_set(tmp_path / "b.zarr", **SMALL_TAGS, seed=3)
    c = synth.tag_set(tmp_path / "c.zarr", **SMALL_TAGS, seed=4)
    Xa, Xb, Xc = (p.matrix.to_memory() for p in (a, b, c))
    assert (Xa != Xb).nnz == 0 and (Xa != Xc).nnz > 0
    np.testing.assert_array_equal(a.topic_tags, b.topic_tags)
    assert Xa.shape == (3000, 2000) and np.all(Xa.data == 1)
    assert abs(Xa.nnz - 45_000) < 0.05 * 45_000
    assert a.topic_tags.shape == (5, 20) and len(np.unique(a.topic_tags)) == 100
    labels = a.matrix.col_labels
    assert labels[a.topic_tags[2, 7]] == "topic02-07" and labels[0] == "t0000"
    assert a.matrix.row_labels[-1] == "item2999"
    # planted tags on an item come from its own topics, bar rare background draws
    rows = Xa[:500].tocsr()
    topic_of = {int(t): k for k, tags in enumerate(a.topic_tags) for t in tags}
    own = other = 0
    for i in range(500):
        for t in rows.indices[rows.indptr[i]:rows.indptr[i + 1]]:
            if int(t) in topic_of:
                mine = topic_of[int(t)] in a.item_topics[i]
                own, other = own + mine, other + (not mine)
    assert other < 0.05 * own


def test_tag_records_ingest_to_the_same_matrix_and_nmf_finds_the_topics(tmp_path):
    stored = synth.tag_set(tmp_path / "s.zarr", **SMALL_TAGS, seed=3)
    records = synth.tag_records(tmp_path / "t.jsonl", **SMALL_TAGS, seed=3)
    np.testing.assert_array_equal(records.topic_tags, stored.topic_tags)
    report = ingest_tags(tmp_path / "t.jsonl", tmp_path / "t.zarr")
    assert report.n_skipped == 0
    position = {label: j for j, label in enumerate(stored.tag_labels)}
    columns = [position[label] for label in report.matrix.col_labels]
    X = stored.matrix.to_memory().tocsc()
    assert (report.matrix.to_memory() != X[:, columns]).nnz == 0
    assert X.nnz == report.nnz  # tags never used are the only columns ingest drops

    tfidf = ingest_tags(tmp_path / "t.jsonl", tmp_path / "w.zarr", min_count=5, tfidf=True)
    H = NMF(5, init="nndsvda", random_state=0, max_iter=300).fit(tfidf.matrix.to_memory()).components_
    labels = tfidf.matrix.col_labels
    found = set()
    for component in H:
        top = labels[np.argsort(component)[::-1][:15]]
        topics = {label.split("-")[0] for label in top}
        assert len(topics) == 1 and topics.pop().startswith("topic")
        found.add(top[0].split("-")[0])
    assert found == {f"topic{k:02d}" for k in range(5)}


def test_pixel_corpus_planted_parts_and_near_duplicates(tmp_path):
    planted = synth.pixel_corpus(tmp_path / "p.zarr", 500, (16, 12), n_parts=8, near_duplicates=5, seed=2)
    again = synth.pixel_corpus(tmp_path / "q.zarr", 500, (16, 12), n_parts=8, near_duplicates=5, seed=2)
    X = planted.matrix.to_memory()
    np.testing.assert_array_equal(X, again.matrix.to_memory())
    assert X.shape == (500, 192) and X.dtype == np.float32 and X.min() >= 0 and X.max() <= 1
    assert planted.matrix.image_shape == (16, 12)
    assert planted.parts.shape == (8, 192) and np.all(planted.parts.max(axis=1) == 1)
    assert planted.groups.shape == (5, 3)
    sq = (X ** 2).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * X @ X.T
    np.fill_diagonal(dist, np.inf)
    for group in planted.groups:
        assert set(dist[group].argmin(axis=1).tolist()) <= set(group.tolist())


def test_pixel_corpus_spans_generation_blocks(tmp_path):
    n = synth.GEN_ROWS + 7
    planted = synth.pixel_corpus(tmp_path / "p.zarr", n, (4, 4), labels=False, seed=5)
    assert planted.matrix.shape == (n, 16) and planted.matrix.row_labels is None
    head = planted.matrix.read_rows(0, synth.GEN_ROWS)
    tail = planted.matrix.read_rows(synth.GEN_ROWS, n)
    assert not np.array_equal(head[:7], tail)  # blocks draw from different seeds


def test_ratings_store_and_table_agree(tmp_path):
    planted = synth.ratings(tmp_path / "r.zarr", 300, 80, n_components=4, density=0.1, seed=1)
    table = synth.rating_table(tmp_path / "r.csv", 300, 80, n_components=4, density=0.1, seed=1)
    X = planted.matrix.to_memory()
    assert X.shape == (300, 80) and X.nnz == planted.n_ratings == table.n_ratings
    assert set(np.unique(X.data).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert planted.item_factors.shape == (4, 80)
    report = ingest_ratings(tmp_path / "r.csv", tmp_path / "i.zarr")
    rows = {u: i for i, u in enumerate(planted.matrix.row_labels)}
    cols = {m: j for j, m in enumerate(planted.matrix.col_labels)}
    ingested = report.matrix.to_memory()
    r_order = [rows[u] for u in report.matrix.row_labels]
    c_order = [cols[m] for m in report.matrix.col_labels]
    assert (ingested != sp.csr_array(X)[r_order][:, c_order]).nnz == 0


def test_documents_are_deterministic_and_topical(tmp_path):
    planted = synth.documents(tmp_path / "d.txt", 2000, n_topics=4, words_per_topic=20, seed=1)
    synth.documents(tmp_path / "e.txt", 2000, n_topics=4, words_per_topic=20, seed=1)
    text = (tmp_path / "d.txt").read_text()
    assert text == (tmp_path / "e.txt").read_text() and text.count("\n") == 2000
    assert planted.topic_words.shape == (4, 20) and planted.doc_topics.shape == (2000, 2)
    report = ingest_text(tmp_path / "d.txt", tmp_path / "d.zarr", docs_per_partition=500, client=False)
    H = NMF(4, init="nndsvda", random_state=0, max_iter=300).fit(report.matrix.to_memory()).components_
    labels = report.matrix.col_labels
    for component in H:
        top = set(labels[np.argsort(component)[::-1][:10]].tolist())
        assert max(len(top & set(words)) for words in planted.topic_words.tolist()) == 10


def test_generators_refuse_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="exceed n_tags"):
        synth.tag_set(tmp_path / "t.zarr", 10, 50, n_assignments=100, n_topics=10, topic_size=10)
    with pytest.raises(ValueError, match="exceeds n_images"):
        synth.pixel_corpus(tmp_path / "p.zarr", 5, (4, 4), near_duplicates=2, group_size=3)
    with pytest.raises(ValueError, match="density"):
        synth.ratings(tmp_path / "r.zarr", 5, 5, density=0)
    synth.documents(tmp_path / "d.txt", 3)
    with pytest.raises(FileExistsError):
        synth.documents(tmp_path / "d.txt", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.txt"]
