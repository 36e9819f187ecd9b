"""The driver and the estimator: equal results on any runner, quality, bad input, checkpoints."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import NMF as SklearnNMF
from sklearn.exceptions import ConvergenceWarning

import distnmf
from distnmf.checkpoint import write_w
from distnmf.driver import FitConfig, fit_blocks
from distnmf.runner import LocalRunner
from distnmf.source import as_source


def planted(m, n, k, noise=0.0, density=1.0, seed=0):
    rng = np.random.default_rng(seed)
    W0 = rng.random((m, k)) * (rng.random((m, k)) < 0.5)
    H0 = rng.random((k, n)) * (rng.random((k, n)) < 0.4)
    X = W0 @ H0 + noise * rng.random((m, n))
    if density < 1:
        X = X * (rng.random((m, n)) < density)
    return X.astype(np.float32), W0, H0


def dense_and_sparse():
    X, _, _ = planted(300, 80, 5, noise=0.05, seed=1)
    S = sp.random(400, 90, density=0.1, format="csr", random_state=2, dtype=np.float32)
    return {"dense": X, "sparse": S}


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_one_iteration_distributed_equals_in_process(dask_client, kind):
    X = dense_and_sparse()[kind]
    m, n = X.shape
    rng = np.random.default_rng(3)
    W0, H0 = rng.random((m, 6)).astype(np.float32), rng.random((6, n)).astype(np.float32)
    distributed = distnmf.NMF(6, init="custom", max_iter=1, tol=0)
    W_dist = distributed.fit_transform(X, W=W0, H=H0)
    # the same iteration in-process, with one block and with many blocks
    for n_blocks in (1, 7):
        source = as_source(X, n_blocks_hint=n_blocks)
        assert source.n_blocks == n_blocks
        runner = LocalRunner()
        result = fit_blocks(runner, source, FitConfig(6, init="custom", max_iter=1, tol=0), W0, H0)
        W_local = np.concatenate(result.w_handles)
        # equal up to float32 summation order
        np.testing.assert_allclose(W_local, W_dist, rtol=1e-4, atol=1e-5 * W_dist.max())
        np.testing.assert_allclose(result.H, distributed.components_, rtol=1e-4,
                                   atol=1e-5 * distributed.components_.max())
        assert result.errors[0] == pytest.approx(distributed.error_history_[0], rel=1e-5)


def test_distributed_tasks_have_readable_names(dask_client):
    from distributed import get_task_stream
    from dask.utils import key_split

    X = dense_and_sparse()["dense"]
    with get_task_stream(dask_client) as stream:
        distnmf.NMF(4, max_iter=2, tol=0).fit(X)
    prefixes = {key_split(task["key"]) for task in stream.data}
    assert {"nmf-update-W", "nmf-reduce", "nmf-check-X", "svd-sketch"} <= prefixes


@pytest.mark.parametrize("shape,k", [((400, 120), 4), ((150, 600), 7)])
def test_planted_components_are_recovered(shape, k):
    X, _, H0 = planted(*shape, k, noise=0.001, seed=4)
    model = distnmf.NMF(k, init="nndsvda", max_iter=400, tol=1e-7, random_state=0)
    model.fit(X)
    H = model.components_
    unit = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(H0) @ unit(H).T
    rows, cols = linear_sum_assignment(-similarity)
    assert similarity[rows, cols].min() > 0.97, similarity[rows, cols]


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_quality_no_worse_than_scikit_learn(kind, init):
    if kind == "dense":
        X, _, _ = planted(600, 200, 10, noise=0.2, seed=5)
    else:
        X = sp.random(800, 300, density=0.05, format="csr", random_state=6, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference = SklearnNMF(10, init=init, solver="cd", random_state=0, max_iter=200).fit(X)
        ours = distnmf.NMF(10, init=init, random_state=0, max_iter=200).fit(X)
    # 1e-4: the precision of the error computed from float32 Gram terms at this error level
    assert ours.reconstruction_err_ <= reference.reconstruction_err_ * (1 + 1e-4)


def test_kullback_leibler_matches_scikit_learn():
    X, _, _ = planted(200, 60, 5, noise=0.1, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference = SklearnNMF(5, solver="mu", beta_loss="kullback-leibler", init="nndsvda", max_iter=100,
                               tol=0).fit(X)
        ours = distnmf.NMF(5, solver="mu", beta_loss="kullback-leibler", max_iter=100, tol=0).fit(X)
    assert ours.reconstruction_err_ <= reference.reconstruction_err_ * 1.01
    assert ours.n_iter_ == 100 and len(ours.error_history_) == 100


def test_regularization_shrinks_factors():
    X, _, _ = planted(200, 60, 5, noise=0.1, seed=8)
    plain = distnmf.NMF(5, max_iter=50, random_state=0).fit(X)
    sparse_h = distnmf.NMF(5, max_iter=50, random_state=0, alpha_W=0.01, l1_ratio=1.0).fit(X)
    assert (sparse_h.components_ == 0).mean() > (plain.components_ == 0).mean()


def test_input_types_agree(tmp_path):
    X, _, _ = planted(300, 50, 4, noise=0.05, seed=9)
    store = distnmf.save_matrix(X, tmp_path / "x.zarr", chunk_rows=100)
    zarr_array = zarr.open_group(tmp_path / "x.zarr")["X"]
    results = {}
    for name, data in {"numpy": X, "list": X.tolist(), "sparse": sp.csr_matrix(X), "path": str(store.path),
                       "matrix": store, "dask": da.from_array(X, chunks=(100, 50)), "zarr": zarr_array}.items():
        model = distnmf.NMF(4, max_iter=20, tol=0, random_state=0, W_store=None)
        W = model.fit_transform(data)
        if name in ("path", "matrix", "dask", "zarr"):
            assert isinstance(W, da.Array)
        results[name] = (np.asarray(W), model.components_)
    for name, (W, H) in results.items():
        np.testing.assert_allclose(H, results["numpy"][1], rtol=2e-3, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(W, results["numpy"][0], rtol=2e-3, atol=1e-4, err_msg=name)


def test_keep_in_memory_or_reread_give_the_same_result(dask_client, tmp_path):
    X, _, _ = planted(500, 60, 4, noise=0.05, seed=10)
    store = distnmf.save_matrix(X, tmp_path / "x.zarr", chunk_rows=64)
    runs = [distnmf.NMF(4, max_iter=15, tol=0, keep_in_memory=keep).fit(store) for keep in (True, False)]
    H = runs[0].components_
    np.testing.assert_allclose(runs[1].components_, H, rtol=1e-4, atol=1e-5 * H.max())


def test_w_store_for_out_of_core_input(tmp_path):
    X, _, _ = planted(200, 30, 3, seed=11)
    store = distnmf.save_matrix(X, tmp_path / "x.zarr", chunk_rows=64)
    W = distnmf.NMF(3, max_iter=10, W_store=tmp_path / "W.zarr").fit_transform(store)
    assert W.shape == (200, 3) and (tmp_path / "W.zarr").exists()
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "W.zarr")["W"][:], W.compute())


def test_transform_and_inverse_transform():
    X, _, _ = planted(300, 40, 4, noise=0.01, seed=12)
    model = distnmf.NMF(4, max_iter=300, tol=1e-6, random_state=0)
    W = model.fit_transform(X)
    W_new = model.transform(X[:10])
    np.testing.assert_allclose(W_new, W[:10], atol=0.05 * W.max())
    assert model.inverse_transform(W_new).shape == (10, 40)
    np.testing.assert_allclose(distnmf.fold_in(X[:10], model.components_), W_new, rtol=1e-4,
                               atol=1e-4 * W_new.max())


@pytest.mark.parametrize("sparse", [False, True])
def test_transform_is_invariant_to_row_order(sparse):
    X, _, _ = planted(2000, 60, 5, noise=0.05, seed=19)
    X = sp.csr_matrix(np.where(X > 0.5, X, 0)) if sparse else X
    model = distnmf.NMF(5, random_state=0, max_iter=50).fit(X)
    order = np.random.default_rng(0).permutation(X.shape[0])
    W = model.transform(X)
    np.testing.assert_allclose(model.transform(X[order]), W[order], rtol=1e-5, atol=1e-6 * W.max())


def test_callback_verbose_and_convergence_warning(capsys):
    X, _, _ = planted(100, 30, 3, noise=0.1, seed=13)
    seen = []
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations 5"):
        model = distnmf.NMF(3, max_iter=5, tol=1e-12, verbose=1,
                            callback=lambda it, err, t: seen.append((it, err, t))).fit(X)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]
    assert [s[1] for s in seen] == model.error_history_
    assert all(b[2] >= a[2] for a, b in zip(seen, seen[1:]))
    assert "iteration    5  relative error" in capsys.readouterr().out


def test_callback_exception_aborts_the_fit():
    X, _, _ = planted(100, 30, 3, seed=14)

    def stop(iteration, error, elapsed):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distnmf.NMF(3, max_iter=50, callback=stop).fit(X)


BAD_INPUTS = [
    (np.array([[1.0, -2.0], [3.0, 4.0]]), ValueError, "Negative values.*row 0, column 1"),
    (np.array([[1.0, np.nan], [3.0, 4.0]]), ValueError, "NaN"),
    (np.array([[1.0, np.inf], [3.0, 4.0]]), ValueError, "infinity"),
    (np.ones(5), ValueError, "2D array"),
    (np.ones((2, 3, 4)), ValueError, "3"),
    (np.ones((0, 4)), ValueError, "0 sample"),
]


@pytest.mark.parametrize("X,error,message", BAD_INPUTS)
def test_bad_input_is_rejected_before_work(X, error, message):
    with pytest.raises(error, match=message):
        distnmf.NMF(1).fit(X)


def test_bad_blocks_in_stores_are_named(tmp_path):
    X = np.ones((300, 8), dtype=np.float32)
    X[250, 3] = -1
    group = zarr.open_group(tmp_path / "bare.zarr", mode="w")
    group.create_array("X", shape=X.shape, chunks=(100, 8), dtype=np.float32)[:] = X
    with pytest.raises(ValueError, match=r"negative value \(-1.0\) at row 250, column 3 \(row block starting at row 200\)"):
        distnmf.NMF(2).fit(tmp_path / "bare.zarr")
    with pytest.raises(ValueError, match="at row 250, column 3"):
        distnmf.NMF(2).fit(da.from_array(X, chunks=(100, 8)))


@pytest.mark.parametrize("params,message", [
    ({"n_components": 0}, "n_components"),
    ({"n_components": 9, "init": "nndsvda"}, r"init = 'nndsvda' can only be used when n_components <= min"),
    ({"n_components": 2, "solver": "als"}, "solver"),
    ({"n_components": 2, "beta_loss": "hinge"}, "beta_loss"),
    ({"n_components": 2, "beta_loss": "kullback-leibler"}, "solver 'hals' does not handle beta_loss"),
    ({"n_components": 2, "init": "svd"}, "init"),
    ({"n_components": 2, "max_iter": 0}, "max_iter"),
    ({"n_components": 2, "tol": -1}, "tol"),
    ({"n_components": 2, "l1_ratio": 2}, "l1_ratio"),
    ({"n_components": 2, "init": "custom"}, "needs both W and H"),
])
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        distnmf.NMF(**params).fit(np.ones((20, 8)))


def test_missing_or_corrupt_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no matrix store"):
        distnmf.NMF(2).fit(tmp_path / "missing.zarr")
    (tmp_path / "corrupt.zarr").mkdir()
    (tmp_path / "corrupt.zarr" / "zarr.json").write_text("garbage")
    with pytest.raises(ValueError, match="not a readable Zarr store"):
        distnmf.NMF(2).fit(str(tmp_path / "corrupt.zarr"))


@pytest.mark.parametrize("beta_loss", ["itakura-saito", -0.5])
def test_negative_beta_loss_rejects_zeros_dense_or_sparse(beta_loss):
    S = sp.random(30, 10, density=0.3, format="csr", random_state=0)
    message = "When beta_loss <= 0 and X contains zeros, the solver may diverge"
    for X in (S, S.toarray(), S + sp.csr_array(([0.0], ([0], [0])), shape=S.shape)):
        with pytest.raises(ValueError, match=message):
            distnmf.NMF(2, solver="mu", beta_loss=beta_loss).fit(X)
    distnmf.NMF(2, solver="mu", beta_loss=beta_loss, max_iter=5).fit(S.toarray() + 1e-3)


def test_negative_beta_loss_rejects_zeros_of_an_out_of_core_store_before_iterating(tmp_path):
    """A store is only read by the fit: its first pass (validation) finds the zero and the fit
    stops there with scikit-learn's message, before the initialisation and any iteration."""
    X = np.random.default_rng(0).random((300, 12)).astype(np.float32) + 0.1
    X[250, 7] = 0.0
    path = distnmf.save_matrix(X, tmp_path / "x.zarr", chunk_rows=100).path
    seen = []
    model = distnmf.NMF(2, solver="mu", beta_loss="itakura-saito", keep_in_memory=False,
                        callback=lambda *args: seen.append(args))
    with pytest.raises(ValueError, match="When beta_loss <= 0 and X contains zeros, the solver may diverge"):
        model.fit(path)
    assert seen == []
    X[250, 7] = 0.5
    distnmf.save_matrix(X, tmp_path / "ok.zarr", chunk_rows=100)
    model.set_params(max_iter=3).fit(tmp_path / "ok.zarr")
    assert np.isfinite(model.reconstruction_err_) and len(seen) == 3


def test_a_loss_that_is_not_finite_is_reported_as_nan_never_as_zero():
    from distnmf.solvers import loss_to_error

    assert math.isnan(loss_to_error(float("nan"), 2.0)) and math.isnan(loss_to_error(float("inf"), 2.0))
    assert math.isnan(loss_to_error(float("-inf"), 2.0))
    assert loss_to_error(-1e-9, 2.0) == 0.0 and loss_to_error(2.0, 2.0) == 1.0


def test_scikit_learn_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    # Skipped, with the reason: with the checks' default n_components = n_features = 3 on 30 x 3
    # data an exact factorization exists and is degenerate; HALS approaches it slowly, so after
    # 200 iterations fit_transform's W is still ~0.04 from the fold-in optimum that transform
    # returns, beyond the checks' absolute tolerance of 0.01. On non-degenerate problems the two
    # agree (test_transform_and_inverse_transform).
    expected_failed = {
        "check_transformer_general": "degenerate k = n_features problem, see above",
        "check_transformer_data_not_an_array": "same check as check_transformer_general on a list input",
        # distnmf computes in float32 by design (DESIGN.md: memory bandwidth); this check compares
        # with rtol=1e-7, i.e. 1-2 float32 ULPs, and BLAS edge kernels round a row differently
        # depending on its position now and then. Order invariance to float32 precision is
        # tested in test_transform_is_invariant_to_row_order.
        "check_methods_sample_order_invariance": "float32 results; compared at a float64 tolerance",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        results = check_estimator(distnmf.NMF(), expected_failed_checks=expected_failed, on_fail=None)
    failed = [r for r in results if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])[:200]) for r in failed]
    assert sum(r["status"] == "passed" for r in results) >= 40


RESUMABLE_FIT = textwrap.dedent("""
    import sys, time
    import distnmf
    def slow(iteration, error, elapsed):
        time.sleep(0.3)
    distnmf.NMF(5, max_iter=40, tol=0, random_state=0, checkpoint=sys.argv[2], checkpoint_every=5,
                callback=slow).fit(sys.argv[1])
""")


def test_checkpoint_kill_resume_equals_uninterrupted(tmp_path):
    X, _, _ = planted(400, 70, 5, noise=0.05, seed=15)
    store = distnmf.save_matrix(X, tmp_path / "x.zarr", chunk_rows=100)
    checkpoint = tmp_path / "ckpt.zarr"
    proc = subprocess.Popen([sys.executable, "-c", RESUMABLE_FIT, str(store.path), str(checkpoint)],
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.time() + 120
    iteration = 0
    while time.time() < deadline and iteration < 10:
        time.sleep(0.2)
        if checkpoint.exists():
            iteration = zarr.open_group(checkpoint, mode="r").attrs["distnmf_checkpoint"]["iteration"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= iteration < 40, "the fit was not killed midway"
    resumed = distnmf.NMF(5, max_iter=40, tol=0, random_state=0, resume=checkpoint).fit(store)
    uninterrupted = distnmf.NMF(5, max_iter=40, tol=0, random_state=0).fit(store)
    assert resumed.n_iter_ == uninterrupted.n_iter_ == 40
    np.testing.assert_allclose(resumed.components_, uninterrupted.components_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(resumed.error_history_, uninterrupted.error_history_, rtol=1e-6)


def test_resume_rejects_a_checkpoint_of_another_shape(tmp_path):
    X, _, _ = planted(100, 20, 3, seed=16)
    distnmf.NMF(3, max_iter=5, tol=0, checkpoint=tmp_path / "c.zarr", checkpoint_every=5).fit(X)
    with pytest.raises(ValueError, match="do not match"):
        distnmf.NMF(4, resume=tmp_path / "c.zarr").fit(X)
    with pytest.raises(FileNotFoundError):
        distnmf.NMF(3, resume=tmp_path / "nope.zarr").fit(X)


def test_factorize_writes_a_complete_factors_store(tmp_path):
    X, _, _ = planted(200, 30, 3, noise=0.01, seed=17)
    store = distnmf.save_matrix(X, tmp_path / "x.zarr", row_labels=[f"r{i}" for i in range(200)],
                                col_labels=[f"c{j}" for j in range(30)], attrs={"image_shape": [5, 6]},
                                chunk_rows=64)
    seen = []
    factors = distnmf.factorize(store.path, tmp_path / "f.zarr", n_components=3, max_iter=30, random_state=0,
                                callback=lambda *args: seen.append(args))
    reference = distnmf.NMF(3, max_iter=30, random_state=0).fit(store)
    np.testing.assert_allclose(factors.H, reference.components_, rtol=1e-5)
    assert factors.read_W().shape == (200, 3) and factors.image_shape == (5, 6)
    assert factors.row_labels[5] == "r5" and factors.col_labels[29] == "c29"
    assert factors.attrs["params"]["n_components"] == 3 and factors.attrs["source"] == str(store.path)
    assert factors.error_history == pytest.approx(reference.error_history_) and len(seen) == reference.n_iter_


def test_factorize_leaves_nothing_when_aborted(tmp_path):
    X, _, _ = planted(100, 20, 3, seed=18)

    def abort(iteration, error, elapsed):
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        distnmf.factorize(X, tmp_path / "f.zarr", n_components=3, callback=abort)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("variant", ["nndsvd", "nndsvda"])
def test_nndsvd_matches_scikit_learn(variant):
    """On a clearly low-rank matrix the blockwise randomized SVD finds the same singular
    vectors as scikit-learn's, so NNDSVD gives the same starting factors."""
    from sklearn.decomposition._nmf import _initialize_nmf

    from distnmf.init import nndsvd_init

    X, _, _ = planted(500, 80, 5, noise=0.001, seed=20)
    W_ref, H_ref = _initialize_nmf(X.astype(np.float64), 5, init=variant, random_state=0)
    runner = LocalRunner()
    source = as_source(X, n_blocks_hint=3)
    w_blocks, H = nndsvd_init(runner, runner.load(source, True), source.bounds, 80, 5, variant, float(X.mean()), 0)
    W = np.concatenate(w_blocks)
    np.testing.assert_allclose(W, W_ref, atol=1e-4 * W_ref.max())
    np.testing.assert_allclose(H, H_ref, atol=1e-4 * H_ref.max())


@pytest.mark.parametrize("shape", [(400, 150), (150, 400)], ids=["tall", "wide"])
def test_nndsvd_draws_what_scikit_learn_draws(shape):
    """On a matrix whose spectrum decays slowly (random sparse: real text's trailing directions),
    other random draws give other trailing singular vectors, and another NNDSVD start: with the
    same ``random_state`` distnmf's draws, and its power iterations on X or on Xᵀ (wide X), are
    scikit-learn's, so the start is scikit-learn's to float32 rounding, over any row blocks."""
    from sklearn.decomposition._nmf import _initialize_nmf

    from distnmf.init import nndsvd_init

    X = sp.random(*shape, density=0.05, random_state=np.random.RandomState(1), format="csr", dtype=np.float32)
    W_ref, H_ref = _initialize_nmf(X, 12, init="nndsvda", random_state=0)
    runner = LocalRunner()
    source = as_source(X, n_blocks_hint=3)
    w_blocks, H = nndsvd_init(runner, runner.load(source, True), source.bounds, shape[1], 12, "nndsvda",
                              float(X.mean()), 0)
    assert len(w_blocks) == 3
    assert np.linalg.norm(np.concatenate(w_blocks) - W_ref) < 1e-3 * np.linalg.norm(W_ref)
    assert np.linalg.norm(H - H_ref) < 1e-3 * np.linalg.norm(H_ref)


class PassCounter(LocalRunner):
    """A LocalRunner counting the randomized SVD's passes over X (its sketch and projection maps)."""

    passes = 0

    def map(self, name, fn, *columns, shared=()):
        self.passes += name in ("svd-sketch", "svd-project")
        return super().map(name, fn, *columns, shared=shared)


@pytest.mark.parametrize("shape", [(600, 200), (200, 600)], ids=["tall", "wide"])
def test_power_iterations_stop_once_the_subspace_settles(shape):
    """Planted rank-8 data with noise: the Ritz values settle after two power iterations and
    the rest are skipped, the start still scikit-learn's; a random sparse matrix (a slowly
    decaying spectrum) gets all 7 (1 + 2 x 7 + 1 passes over X)."""
    from sklearn.decomposition._nmf import _initialize_nmf

    from distnmf.init import nndsvd_init

    rng = np.random.default_rng(5)
    planted_X = (rng.gamma(1.0, size=(shape[0], 8)) @ rng.gamma(1.0, size=(8, shape[1])) *
                 (1 + 0.01 * rng.random(shape))).astype(np.float32)
    noisy_X = sp.random(*shape, density=0.05, random_state=np.random.RandomState(1), format="csr", dtype=np.float32)
    passes = {}
    for name, X in (("planted", planted_X), ("sparse", noisy_X)):
        runner = PassCounter()
        source = as_source(X, n_blocks_hint=2)
        w_blocks, H = nndsvd_init(runner, runner.load(source, True), source.bounds, shape[1], 8, "nndsvda",
                                  float(X.mean()), 0)
        passes[name] = runner.passes
        W_ref, H_ref = _initialize_nmf(X, 8, init="nndsvda", random_state=0)
        assert np.linalg.norm(np.concatenate(w_blocks) - W_ref) < 1e-3 * np.linalg.norm(W_ref), name
        assert np.linalg.norm(H - H_ref) < 1e-3 * np.linalg.norm(H_ref), name
    settled = 7 if shape[0] >= shape[1] else 6  # the check costs X's side half a power iteration more
    assert passes == {"planted": settled, "sparse": 16}


def test_transform_applies_the_fits_w_regularization():
    X, _, _ = planted(200, 40, 4, noise=0.05, seed=21)
    plain = distnmf.NMF(4, random_state=0, max_iter=100).fit(X)
    sparse_w = distnmf.NMF(4, random_state=0, max_iter=100, alpha_W=0.05, l1_ratio=1.0)
    sparse_w.components_, sparse_w.n_components_, sparse_w.n_features_in_ = plain.components_, 4, 40
    assert (sparse_w.transform(X) == 0).mean() > (plain.transform(X) == 0).mean()
    np.testing.assert_allclose(sparse_w.transform(X[:5]),
                               distnmf.fold_in(X[:5], plain.components_, alpha_W=0.05, l1_ratio=1.0), rtol=1e-5)


def test_truncated_svd_bad_rank_leaves_blas_threads_alone():
    """A rejected n_components must not leave the runner's threadpool_limits(1) on for the process."""
    from threadpoolctl import threadpool_info

    from distnmf.init import truncated_svd

    before = [pool["num_threads"] for pool in threadpool_info()]
    X = np.random.default_rng(0).random((30, 8), dtype=np.float32)
    for bad in (0, 9):
        with pytest.raises(ValueError, match="n_components must be in"):
            truncated_svd(X, bad)
    assert [pool["num_threads"] for pool in threadpool_info()] == before


def test_public_names_are_not_shadowed_by_submodules():
    """Importing every submodule first must not turn ``distnmf.<name>`` into a module."""
    import importlib
    import inspect
    import pkgutil

    for module in pkgutil.walk_packages(distnmf.__path__, "distnmf."):
        importlib.import_module(module.name)
    for name in distnmf.__all__:
        assert not inspect.ismodule(getattr(distnmf, name)), name
    from distnmf import factorize

    assert callable(factorize)


def test_w_written_from_unequal_blocks_has_one_writer_per_chunk(tmp_path):
    """Blocks of unequal sizes (10, 15, 5 rows) must not share a Zarr chunk: each chunk is written
    by one task, so concurrent block writes cannot overwrite each other's rows."""
    bounds = (0, 10, 25, 30)
    W = np.arange(30 * 3, dtype=np.float32).reshape(30, 3)
    zarr.open_group(tmp_path / "g.zarr", mode="w")
    runner = LocalRunner(2)
    try:
        write_w(runner, [W[a:b] for a, b in zip(bounds[:-1], bounds[1:])], bounds, tmp_path / "g.zarr", 3)
    finally:
        runner.close()
    stored = zarr.open_group(tmp_path / "g.zarr", mode="r")["W"]
    assert all(a % stored.chunks[0] == 0 for a in bounds[:-1])
    np.testing.assert_array_equal(stored[:], W)
