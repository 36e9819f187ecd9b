"""The in-memory similarity index: exact answers equal a brute-force scan, faiss answers reach the
recall target, the index persists beside the factors and the cache evicts under its budget."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from distnmf import analysis, index
from distnmf.estimator import NMF
from distnmf.factors import save_factors
from distnmf.synth.pixels import sparse_coefficients


def _exact_neighbours(V: np.ndarray, rows: np.ndarray, k: int) -> list[set[int]]:
    unit = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-30)
    scores = unit[rows] @ unit.T
    scores[np.arange(len(rows)), rows] = -np.inf
    return [set(np.argsort(-s, kind="stable")[:k].tolist()) for s in scores]


def _recall(found: list[tuple[np.ndarray, np.ndarray]], truth: list[set[int]]) -> float:
    return float(np.mean([len(set(ids.tolist()) & t) / len(t) for (ids, _), t in zip(found, truth)]))


@pytest.fixture(scope="module")
def digits_factors(tmp_path_factory):
    """W of a real fit (scikit-learn's digits, 1,797 x 64, k=12), stored as factors."""
    X = load_digits().data.astype(np.float32)
    model = NMF(n_components=12, max_iter=60, random_state=0)
    W = model.fit_transform(X)
    return save_factors(tmp_path_factory.mktemp("idx") / "digits.zarr", W, model.components_)


def test_top_k_breaks_ties_by_index_and_skips_nan():
    scores = np.array([0.5, 0.9, np.nan, 0.9, 0.1, 0.9], dtype=np.float32)
    ids, values = index.top_k(scores, 3)
    assert ids.tolist() == [1, 3, 5]
    ids, _ = index.top_k(scores, 2, least=True)
    assert ids.tolist() == [4, 0]
    assert index.top_k(scores, 10)[0].tolist() == [1, 3, 5, 0, 4]


def test_exact_batched_search_equals_brute_force(digits_factors):
    W = digits_factors.read_W()
    exact = index.build(W, approximate_from=10**9)
    assert exact.kind == "exact" and exact.approximate is None
    rows = np.arange(0, len(W), 37)
    found = exact.search(W[rows], 10, exclude=rows)
    assert _recall(found, _exact_neighbours(W, rows, 10)) == 1.0
    for (ids, scores), row in zip(found, rows):
        assert row not in ids and np.all(np.diff(scores) <= 0)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_reaches_recall_target(digits_factors, kind):
    W = digits_factors.read_W()
    approx = index.build(W, approximate_from=0, kinds=(kind,))
    assert approx.kind == kind and approx.recall >= index.TARGET_RECALL
    rows = np.random.default_rng(5).choice(len(W), 200, replace=False)
    assert _recall(approx.search(W[rows], 10, exclude=rows), _exact_neighbours(W, rows, 10)) >= 0.99
    # least similar stays exact
    least = approx.search(W[rows[:5]], 4, least=True, exclude=rows[:5])
    assert [ids.tolist() for ids, _ in least] == [ids.tolist() for ids, _ in
                                                  approx._search_exact(index.normalize_rows(W[rows[:5]]), 4, True,
                                                                       rows[:5])]


def test_recall_on_planted_mixtures_of_a_larger_w():
    """Sparse non-negative mixing weights (the pixel generator's), 60,000 x 20, with a dense floor."""
    rng = np.random.default_rng(1)
    W = sparse_coefficients(rng, 60_000, 20, 3.0) + rng.exponential(0.02, (60_000, 20)).astype(np.float32)
    approx = index.build(W, approximate_from=0)
    rows = rng.choice(len(W), 300, replace=False)
    assert _recall(approx.search(W[rows], 10, exclude=rows), _exact_neighbours(W, rows, 10)) >= 0.99


def test_index_is_persisted_and_loaded_not_rebuilt(digits_factors, monkeypatch):
    cache = index.IndexCache(approximate_from=0)
    first = cache.get(digits_factors, "rows")
    assert (digits_factors.path / "similarity" / "rows" / "faiss.index").exists()
    assert cache.get(digits_factors, "rows") is first  # loaded once per store and axis

    def no_build(*args, **kwargs):
        raise AssertionError("the persisted index should have been loaded")

    monkeypatch.setattr(index, "build", no_build)
    reloaded = index.IndexCache(approximate_from=0).get(digits_factors, "rows")
    assert reloaded.kind == first.kind and reloaded.depth == first.depth
    np.testing.assert_array_equal(reloaded.vectors, first.vectors)
    hits = analysis.similar(digits_factors, 3, k=5, cache=index.IndexCache(approximate_from=0))
    assert len(hits) == 5 and 3 not in [h.index for h in hits]


def test_rewritten_factors_drop_the_old_index(tmp_path):
    rng = np.random.default_rng(2)
    factors = save_factors(tmp_path / "f.zarr", rng.random((50, 3)), rng.random((3, 8)))
    index.IndexCache().get(factors, "rows")
    factors = save_factors(tmp_path / "f.zarr", rng.random((40, 3)), rng.random((3, 8)), overwrite=True)
    assert len(index.IndexCache().get(factors, "rows").vectors) == 40


def test_cache_evicts_least_recently_used(tmp_path):
    rng = np.random.default_rng(3)
    stores = [save_factors(tmp_path / f"f{i}.zarr", rng.random((1000, 5)), rng.random((5, 9))) for i in range(3)]
    one = index.expected_nbytes(1000, 5, "exact")
    cache = index.IndexCache(max_bytes=2 * one)
    cache.get(stores[0], "rows")
    cache.get(stores[1], "rows")
    cache.get(stores[0], "rows")  # store 0 is now the most recent
    cache.get(stores[2], "rows")
    assert len(cache) == 2 and cache.nbytes <= 2 * one
    keys = {key[0] for key in cache._indexes}
    assert str(stores[1].path.resolve()) not in keys and str(stores[0].path.resolve()) in keys
    small = index.IndexCache(max_bytes=one - 1)
    assert not small.fits(stores[0], "rows")
    assert analysis.similar(stores[0], 1, k=3, cache=small) == analysis.similar(stores[0], 1, k=3, method="scan")


def test_component_tops_kept_by_the_index(digits_factors, monkeypatch):
    W = digits_factors.read_W()
    built = index.build(W)
    for c in (0, 5):
        expected = np.lexsort((np.arange(len(W)), -W[:, c]))[:7]
        ids, values = built.top_of_component(c, 7)
        assert ids.tolist() == expected.tolist()
        np.testing.assert_array_equal(values, W[expected, c])
    monkeypatch.setattr(index, "COMPONENT_TOP", 4)
    cache = index.IndexCache()
    cache._indexes[(str(digits_factors.path.resolve()), "rows")] = index.build(W)
    assert cache.get(digits_factors, "rows").top_of_component(0, 5) is None  # more than kept: analysis scans
    assert analysis.top_components(digits_factors, 0, top=5, cache=cache) == \
        analysis.top_components(digits_factors, 0, top=5, method="scan")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_masses_of_identical_rows_are_indexed_once_and_keep_the_recall(tmp_path, kind):
    """Tag-like W where most rows repeat a few patterns (some scaled: equal once normalised): each
    distinct vector is indexed once, a hit expands to its rows (lowest first, as the exact search
    breaks ties), and the approximate index reaches the recall target (tie-aware recall@10) instead
    of falling back to exact; the groups persist."""
    rng = np.random.default_rng(4)
    patterns = sparse_coefficients(rng, 40, 8, 2.0)
    scale = rng.choice(np.array([1.0, 2.0, 0.5], dtype=np.float32), size=(30_000, 1))
    W = np.concatenate([patterns[rng.integers(40, size=30_000)] * scale, sparse_coefficients(rng, 2_000, 8, 3.0)])
    factors = save_factors(tmp_path / "dup.zarr", W, rng.random((8, 5)))
    built = index.build_for(factors, approximate_from=0) if kind == "ivf" else index.build(
        W, approximate_from=0, kinds=("hnsw",))
    assert built.kind == kind and built.recall >= index.TARGET_RECALL
    assert built.approximate.ntotal < 2_100 and built.starts[-1] == len(W)
    rows = rng.choice(len(W), 100, replace=False)
    unit = index.normalize_rows(W)
    exact = built._search_exact(unit[rows], 10, False, rows)
    found = built.search(W[rows], 10, exclude=rows)
    assert np.mean([np.sum(unit[ids] @ unit[r] >= s[-1] - 1e-6) / 10
                    for (ids, _), r, (_, s) in zip(found, rows, exact)]) >= 0.99
    for (ids, scores), row in zip(found, rows):
        assert row not in ids and len(ids) == 10 and np.all(np.diff(scores) <= 0)
    twin = np.flatnonzero(np.all(unit == unit[rows[0]], axis=1))  # a duplicated row's twins come first, in order
    if len(twin) > 11:
        assert found[0][0].tolist() == twin[twin != rows[0]][:10].tolist()
    if kind == "ivf":
        loaded = index.load(index.index_path(factors, "rows"), W.shape, "approximate")
        assert loaded.kind == "ivf" and loaded.search(W[rows[:3]], 10, exclude=rows[:3])[0][0].tolist() == \
            found[0][0].tolist()
