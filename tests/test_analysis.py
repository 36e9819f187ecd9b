"""Analysis queries against direct numpy references on small data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from distnmf import analysis, rank
from distnmf.analysis import Hit
from distnmf.factors import save_factors
from distnmf.matrixwriter import save_matrix

N_ROWS, N_COLS, K = 60, 25, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A sparse count matrix with planted blocks, its store, and random positive factors for it."""
    tmp = tmp_path_factory.mktemp("analysis")
    rng = np.random.default_rng(0)
    X = (rng.random((N_ROWS, N_COLS)) < 0.2).astype(np.float32) * rng.integers(1, 4, (N_ROWS, N_COLS))
    X[:, 3] = 0  # a column that co-occurs with nothing
    row_labels = [f"r{i}" for i in range(N_ROWS)]
    col_labels = [f"c{j}" for j in range(N_COLS)]
    matrix = save_matrix(sp.csr_array(X), tmp / "x.zarr", row_labels, col_labels)
    W = rng.random((N_ROWS, K)).astype(np.float32)
    H = rng.random((K, N_COLS)).astype(np.float32)
    factors = save_factors(tmp / "f.zarr", W, H, row_labels=row_labels, col_labels=col_labels,
                           attrs={"params": {"beta_loss": "frobenius"}, "source": str(tmp / "x.zarr")})
    return X, W, H, matrix, factors


def _cosine_reference(A: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (A @ q) / (np.linalg.norm(A, axis=1) * np.linalg.norm(q))


def _expected(scores: np.ndarray, k: int, least: bool, exclude: int | None = None) -> list[int]:
    order = [int(i) for i in (np.argsort(scores, kind="stable") if least else np.argsort(-scores, kind="stable"))]
    return [i for i in order if i != exclude][:k]


@pytest.mark.parametrize("method, block_rows", [("index", None), ("scan", None), ("scan", 1), ("scan", 7)])
@pytest.mark.parametrize("least", [False, True])
def test_similar_rows_matches_brute_force(data, method, block_rows, least):
    _, W, _, _, factors = data
    hits = analysis.similar(factors, "r5", k=6, least=least, method=method, block_rows=block_rows)
    ref = _cosine_reference(W, W[5])
    assert [h.index for h in hits] == _expected(ref, 6, least, exclude=5)
    assert [h.label for h in hits] == [f"r{h.index}" for h in hits]
    np.testing.assert_allclose([h.score for h in hits], ref[[h.index for h in hits]], rtol=1e-5)


def test_similar_columns_and_index_key(data):
    _, _, H, _, factors = data
    ref = _cosine_reference(H.T, H[:, 2])
    for method in ("index", "scan"):
        hits = analysis.similar(factors, 2, k=5, axis="columns", method=method, block_rows=4)
        assert [h.index for h in hits] == _expected(ref, 5, False, exclude=2)
    assert hits[0].label == f"c{hits[0].index}"


def test_similar_to_vector_and_cluster(data, dask_client):
    _, W, _, _, factors = data
    w = np.array([1.0, 0.0, 0.5, 0.0], dtype=np.float32)
    hits = analysis.similar_to_vector(factors, w, k=4, method="scan", block_rows=9)
    assert [h.index for h in hits] == _expected(_cosine_reference(W, w), 4, False)


@pytest.mark.parametrize("method", ["index", "scan"])
def test_top_components(data, method):
    _, W, H, _, factors = data
    out = analysis.top_components(factors, 1, top=5, method=method)
    assert out["component"] == 1
    assert [h.index for h in out["rows"]] == _expected(W[:, 1], 5, False)
    assert [h.index for h in out["columns"]] == _expected(H[1], 5, False)
    assert out["rows"][0] == Hit(out["rows"][0].index, f"r{out['rows'][0].index}", pytest.approx(W[:, 1].max()))
    assert len(analysis.top_components(factors, 0, top=40)["columns"]) == N_COLS  # fewer columns than top


def test_cooccurring_matches_gram_column(data):
    X, _, _, matrix, _ = data
    gram = X.T.astype(np.float64) @ X[:, 7]
    gram[7] = 0
    hits = analysis.cooccurring(matrix, "c7", k=5)
    assert [h.index for h in hits] == _expected(gram, 5, False)
    np.testing.assert_allclose([h.score for h in hits], gram[[h.index for h in hits]])
    assert analysis.cooccurring(matrix, "c3", k=5) == []  # never co-occurs: nothing to report


def test_cooccurring_dense_store(data, tmp_path):
    X = data[0]
    matrix = save_matrix(X, tmp_path / "dense.zarr", chunk_rows=8)
    gram = X.T.astype(np.float64) @ X[:, 0]
    gram[0] = 0
    assert [h.index for h in analysis.cooccurring(matrix, 0, k=3)] == _expected(gram, 3, False)


def test_recommend_excludes_seen(data):
    X, W, H, matrix, factors = data
    hits = analysis.recommend(factors, matrix, "r4", k=5)
    scores = W[4] @ H
    scores[X[4] > 0] = -np.inf
    assert [h.index for h in hits] == _expected(scores, 5, False)
    assert not any(X[4, h.index] for h in hits)
    assert len(analysis.recommend(factors, matrix, 4, k=N_COLS)) == int((X[4] == 0).sum())


def test_fold_in_recovers_rows(data):
    _, W, H, _, factors = data
    X_new = W[[10, 20]] @ H
    W_new, neighbours = analysis.transform(factors, X_new, similar_k=3)
    assert W_new.shape == (2, K)
    np.testing.assert_allclose(W_new @ H, X_new, rtol=0.05, atol=0.05)
    assert [n[0].index for n in neighbours] == [10, 20]
    one, none = analysis.transform(factors, X_new[0])
    assert one.shape == (1, K) and none == [[]]


def test_rank_sweep_errors_decrease(data):
    X = data[0]
    results = rank.rank_sweep(X, [1, 3, 6], max_iter=60, random_state=0)
    assert [r["n_components"] for r in results] == [1, 3, 6]
    errors = [r["reconstruction_err"] for r in results]
    assert errors[0] > errors[1] > errors[2]
    norm = np.linalg.norm(X)
    for r in results:
        assert r["relative_error"] == pytest.approx(r["reconstruction_err"] / norm, rel=1e-3)
        assert r["n_iter"] >= 1


def test_rank_sweep_parallel_on_cluster(data, dask_client):
    results = rank.rank_sweep(data[3], [2, 4], max_iter=30, random_state=0)
    assert [r["n_components"] for r in results] == [2, 4]
    assert results[0]["reconstruction_err"] > results[1]["reconstruction_err"]
    assert rank.parallel_fits(dask_client, 1000, 5) == 2


@pytest.mark.parametrize(("call", "message"), [
    (lambda f, m: analysis.similar(f, "nope"), "row label 'nope' not found"),
    (lambda f, m: analysis.similar(f, "r5", k=N_ROWS), f"k={N_ROWS} is larger than the number of other rows"),
    (lambda f, m: analysis.similar(f, "r5", k=0), "k must be >= 1"),
    (lambda f, m: analysis.similar(f, 999), "row index 999 is out of range"),
    (lambda f, m: analysis.similar(f, "c1", axis="diagonal"), "axis must be"),
    (lambda f, m: analysis.top_components(f, K), f"component must be an integer in 0..{K - 1}"),
    (lambda f, m: analysis.cooccurring(m, "c99"), "column label 'c99' not found"),
    (lambda f, m: analysis.recommend(f, m, "r1", k=N_COLS + 1), "larger than the number of columns"),
    (lambda f, m: analysis.similar_to_vector(f, np.zeros(K)), "all-zero coefficient vector"),
    (lambda f, m: analysis.similar_to_vector(f, np.ones(K + 1)), "n_components=4"),
    (lambda f, m: rank.rank_sweep(m, [N_COLS + 1]), "n_components must be in 1..25 for a .* matrix .*got 26"),
])
def test_bad_input_raises_value_error(data, call, message):
    with pytest.raises(ValueError, match=message):
        call(data[4], data[3])


def test_resolve_index_labels_and_errors():
    labels = np.array(["cat", "dog", "cow"])
    assert analysis.resolve_index(labels, "dog", 3, "row") == 1
    assert analysis.resolve_index(labels, 2, 3, "row") == 2
    assert analysis.resolve_index(None, "2", 3, "row") == 2
    assert analysis.resolve_index(labels, "2", 3, "row") == 2  # digits that are no label: an index
    assert analysis.resolve_index(np.array(["7", "3"]), "3", 2, "row") == 1  # a label wins over an index
    with pytest.raises(KeyError, match="did you mean 'cat'"):
        analysis.resolve_index(labels, "cats", 3, "row")
    with pytest.raises(IndexError):
        analysis.resolve_index(labels, -1, 3, "column")


@pytest.mark.parametrize("params", [{}, {"solver": "mu", "beta_loss": "kullback-leibler"}])
def test_fold_in_uses_the_fit_and_finds_the_row_itself(data, tmp_path, params):
    from distnmf import factorize

    X, _, _, matrix, _ = data
    factors = factorize(matrix, tmp_path / "fit.zarr", n_components=K, max_iter=80, random_state=0, **params)
    assert factors.attrs["params"].get("beta_loss", "frobenius") == params.get("beta_loss", "frobenius")
    rows = [2, 30]
    W_new, neighbours = analysis.transform(factors, sp.csr_array(X[rows]), similar_k=2)
    stored = factors.read_W()[rows]
    if params:
        # KL: the fold-in optimizes the fit's own loss: no worse than the stored rows, and better
        # than a Frobenius fold-in of the same rows (80 MU iterations are no converged reference)
        from sklearn.decomposition._nmf import _beta_divergence

        from distnmf import fold_in as fold_in_rows

        def kl(W):
            return _beta_divergence(X[rows], W.astype(np.float64), factors.H.astype(np.float64), 1)

        assert kl(W_new) <= kl(stored) * (1 + 1e-3)
        assert kl(W_new) < kl(fold_in_rows(X[rows], factors.H))
        return
    np.testing.assert_allclose(W_new, stored, rtol=0.1, atol=0.1)
    cosine = (analysis.normalize_rows(W_new) * analysis.normalize_rows(stored)).sum(axis=1)
    assert (cosine > 0.95).all()
    assert all(len(hits) == 2 and hits[0].score >= c - 1e-5 for hits, c in zip(neighbours, cosine))
    assert [n[0].label for n in neighbours] == ["r2", "r30"]  # exact fold-in lands on the row itself
