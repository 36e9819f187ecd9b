"""The ``distnmf`` command line: fit, query and picture factorizations of Zarr matrix stores.

Every command prints a one-line ``error: ...`` on stderr and exits with status 1 on bad input
(a missing store, an unknown label, a rank too large) instead of a traceback.
"""

import contextlib
import dataclasses
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from distnmf.cli_plugins import add_plugin_commands
from distnmf.console import err, out, scheduler_client, user_errors
from distnmf.ingest.cli import app as ingest_app

app = typer.Typer(
    name="distnmf",
    help="Distributed, out-of-core non-negative matrix factorization of Zarr matrix stores.\n\n"
         "Typical session: distnmf fit tags.zarr -k 20 --out tags.nmf.zarr; distnmf top tags.nmf.zarr; "
         "distnmf similar tags.nmf.zarr --column mountain; distnmf plot tags.nmf.zarr",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(ingest_app, name="ingest",
              help="Build a matrix store from images, tag sets, text, rating tables or arrays. "
                   "Example: distnmf ingest images ./cats cats.zarr --shape 64x64")
@contextlib.contextmanager
def _convergence_notes() -> Iterator[None]:
    """Show scikit-learn's ConvergenceWarning as a one-line note on stderr, without source lines."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    notes = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning))
    for note in notes:
        err.print(f"note: {note}", soft_wrap=True)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _hit_dicts(hits: list) -> list[dict]:
    return [dataclasses.asdict(h) for h in hits]


def _print_hits(title: str, hits: list) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("index", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), str(h.index), "" if h.label is None else h.label, f"{h.score:.4f}")
    out.print(table)


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"-k must be a comma-separated list of integers like 5,10,20, got {text!r}") from None
    if not ks:
        raise ValueError("-k is empty; give ranks like 5,10,20")
    return ks


def _fit_params(solver: str, init: str, beta_loss: str, max_iter: int, tol: float,
                random_state: int | None) -> dict[str, Any]:
    return {"solver": solver, "init": init, "beta_loss": beta_loss, "max_iter": max_iter, "tol": tol,
            "random_state": random_state}


def _save_npz(path: Path, **arrays: Any) -> Path:
    """Write arrays to ``path`` (.npz) atomically."""
    from distnmf.storage import atomic_path

    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)
    return path


StoreArg = Annotated[str, typer.Argument(help="Matrix store (.zarr) written by 'distnmf ingest' or save_matrix: "
                                               "a folder or a URL (s3://bucket/prefix/x.zarr).", show_default=False)]
ResultsArg = Annotated[str, typer.Argument(help="Factors store (.zarr) written by 'distnmf fit': a folder or a URL.",
                                           show_default=False)]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address, e.g. "
                                                  "tcp://10.0.0.5:8786. Default: run on this machine.")]
SolverOpt = Annotated[str, typer.Option("--solver", help="hals (Frobenius loss) or mu (any beta loss).")]
InitOpt = Annotated[str, typer.Option("--init", help="nndsvda, nndsvd, nndsvdar or random.")]
BetaOpt = Annotated[str, typer.Option("--beta-loss", help="frobenius, kullback-leibler or itakura-saito "
                                      "(needs --solver mu).")]
MaxIterOpt = Annotated[int, typer.Option("--max-iter", help="Maximum number of iterations.")]
TolOpt = Annotated[float, typer.Option("--tol", help="Stopping tolerance, as in scikit-learn: hals stops when the "
                                        "projected gradient falls below tol x the first iteration's; mu when the error "
                                        "drops by less than tol x the initial error over 10 iterations.")]
SeedOpt = Annotated[int | None, typer.Option("--random-state", help="Seed for reproducible initialisation.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
MissingOpt = Annotated[str, typer.Option("--missing", help="zero: unstored entries are zeros (occurrences, tf-idf); "
                                         "unobserved: only stored entries are data (ratings).")]


# --------------------------------------------------------------------------- fit


@app.command()
@user_errors
def fit(
    store: StoreArg,
    k: Annotated[int, typer.Option("-k", "--n-components", help="Rank: number of components.", show_default=False)],
    solver: SolverOpt = "hals",
    init: InitOpt = "nndsvda",
    beta_loss: BetaOpt = "frobenius",
    max_iter: MaxIterOpt = 200,
    tol: TolOpt = 1e-4,
    random_state: SeedOpt = None,
    scheduler: SchedulerOpt = None,
    results: Annotated[str | None, typer.Option("--out", help="Where to write the factors (folder or URL). "
                                                "Default: STORE's name with .nmf-k<K>.zarr.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing factors store.")] = False,
    missing: MissingOpt = "zero",
    alpha: Annotated[float, typer.Option("--alpha", help="Regularization of W and H (alpha_W = alpha_H), with "
                                         "scikit-learn's scaling; with --missing unobserved, per observed "
                                         "entry (0.1 suits 1-5 star ratings).")] = 0.0,
) -> None:
    """Factorize a matrix store X ≈ W H and write W, H, labels and the error history.

    Example: distnmf fit tags.zarr -k 20 --out tags.nmf.zarr --scheduler tcp://head:8786
    """
    from distnmf import factorize, storage
    from distnmf.store import open_matrix
    from distnmf.validation import check_rank

    matrix = open_matrix(store)
    target = storage.as_location(results or storage.sibling(
        store, f"{storage.name_of(store).removesuffix('.zarr')}.nmf-k{k}.zarr"))
    check_rank(k, matrix.shape, "-k")
    if storage.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")
    params = {**_fit_params(solver, init, beta_loss, max_iter, tol, random_state), "missing": missing,
              "alpha_W": alpha}
    started = time.perf_counter()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("rel. error {task.fields[error]}"), TimeElapsedColumn(), console=err, transient=False)
    with scheduler_client(scheduler), _convergence_notes(), bar as progress:
        task = progress.add_task(f"NMF k={k} on {matrix.shape[0]}x{matrix.shape[1]}", total=max_iter, error="-")

        def report(iteration: int, relative_error: float, elapsed: float) -> None:
            progress.update(task, completed=iteration, error=f"{relative_error:.5g}")

        factors = factorize(matrix, target, n_components=k, callback=report, overwrite=overwrite, **params)
        progress.update(task, total=max(1, int(factors.attrs.get("n_iter", max_iter))),
                        completed=max(1, int(factors.attrs.get("n_iter", max_iter))))
    history = factors.error_history
    error = f"{history[-1]:.5g}" if history else "n/a"
    out.print(f"wrote {factors.path}: W {factors.shape[0]}x{k}, H {k}x{factors.shape[1]}, "
              f"{factors.attrs.get('n_iter', '?')} iterations, relative error {error}, "
              f"{time.perf_counter() - started:.1f} s")
    out.print(f"next: distnmf top {factors.path}   |   distnmf plot {factors.path}")


# --------------------------------------------------------------------------- queries


@app.command()
@user_errors
def top(
    results: ResultsArg,
    component: Annotated[int | None, typer.Option("--component", "-c", help="One component (default: all).")] = None,
    top_n: Annotated[int, typer.Option("--top", "-n", help="How many rows and columns per component.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Show each component's heaviest columns (tags, words ...) and rows (images, documents ...).

    Example: distnmf top tags.nmf.zarr --component 3 --top 15
    """
    from distnmf.analysis import top_components
    from distnmf.factors import open_factors

    factors = open_factors(results)
    components = range(factors.n_components) if component is None else [component]
    found = [top_components(factors, c, top_n) for c in components]
    if as_json:
        out.print_json(json.dumps([{**t, "rows": _hit_dicts(t["rows"]), "columns": _hit_dicts(t["columns"])}
                                   for t in found]))
        return
    for t in found:
        names = [h.label if h.label is not None else str(h.index) for h in t["columns"]]
        rows = [h.label if h.label is not None else str(h.index) for h in t["rows"]]
        out.print(f"component {t['component']}")
        out.print(f"  columns: {' '.join(names)}")
        out.print(f"  rows:    {' '.join(rows)}")


@app.command()
@user_errors
def similar(
    results: ResultsArg,
    row: Annotated[str | None, typer.Option("--row", "-r", help="Label (or index) of the row to query.")] = None,
    column: Annotated[str | None, typer.Option("--column", help="Label (or index) of a column to query "
                                               "(same as --row LABEL --axis columns).")] = None,
    axis: Annotated[str, typer.Option("--axis", help="rows (cosine on W) or columns (cosine on H^T).")] = "rows",
    k: Annotated[int, typer.Option("--k", "-k", help="How many results.")] = 10,
    least: Annotated[bool, typer.Option("--least", help="Show the least similar instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Find the rows (or columns) most similar to one of them, by cosine of their coefficients.

    Example: distnmf similar cats.nmf.zarr --row cat_0042.png -k 5;
    distnmf similar tags.nmf.zarr --column mountain
    """
    from distnmf.analysis import similar as similar_query
    from distnmf.factors import open_factors

    if (row is None) == (column is None):
        raise ValueError("give exactly one of --row LABEL or --column LABEL")
    key = row if row is not None else column
    axis = axis if row is not None else "columns"
    assert key is not None
    hits = similar_query(open_factors(results), key, k=k, axis=axis, least=least)
    if as_json:
        out.print_json(json.dumps(_hit_dicts(hits)))
        return
    _print_hits(f"{'least' if least else 'most'} similar {axis} to {key}", hits)


# --------------------------------------------------------------------------- ranks, SVD, pictures


@app.command()
@user_errors
def sweep(
    store: StoreArg,
    ks: Annotated[str, typer.Option("-k", "--ranks", help="Comma-separated ranks, e.g. 5,10,20,40.",
                                    show_default=False)],
    solver: SolverOpt = "hals",
    init: InitOpt = "nndsvda",
    beta_loss: BetaOpt = "frobenius",
    max_iter: MaxIterOpt = 200,
    tol: TolOpt = 1e-4,
    random_state: SeedOpt = None,
    scheduler: SchedulerOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also write the error-vs-rank PNG here.")] = None,
    as_json: JsonOpt = False,
    cv: Annotated[bool, typer.Option("--cv", help="Cross-validate: hold out entries, fit masked NMF on the rest, "
                                     "report the held-out error per rank and the rank to use.")] = False,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="With --cv: fraction of the observed "
                                                 "entries held out.")] = 0.05,
    replicates: Annotated[int, typer.Option("--replicates", help="With --cv: independent hold-out splits.")] = 3,
) -> None:
    """Fit several ranks and compare their errors; with --cv, on held-out entries, to choose k.

    Example: distnmf sweep ratings.zarr -k 2,4,8,16 --cv --plot rank.png
    """
    from distnmf.plots import elbow_plot
    from distnmf.rank import rank_sweep
    from distnmf.store import open_matrix

    ranks = _parse_ks(ks)
    matrix = open_matrix(store)
    if cv:
        _cv_sweep(store, matrix, ranks, init, max_iter, tol, random_state, scheduler, plot, as_json, test_fraction,
                  replicates)
        return
    params = _fit_params(solver, init, beta_loss, max_iter, tol, random_state)
    with scheduler_client(scheduler), _convergence_notes(), err.status(f"fitting ranks {', '.join(map(str, ranks))} on "
                                         f"{matrix.shape[0]}x{matrix.shape[1]} ..."):
        found = rank_sweep(matrix, ranks, **params)
    if as_json:
        out.print_json(json.dumps(found))
    else:
        table = Table(title=f"rank sweep of {store}", title_justify="left")
        for name in ("n_components", "reconstruction_err", "relative_error", "n_iter"):
            table.add_column(name, justify="right")
        for r in found:
            rel = "n/a" if r["relative_error"] is None else f"{r['relative_error']:.5g}"
            table.add_row(str(r["n_components"]), f"{r['reconstruction_err']:.5g}", rel, str(r["n_iter"]))
        out.print(table)
    if plot is not None:
        err.print(f"wrote {elbow_plot(found, plot)}")


def _cv_sweep(store: str, matrix: Any, ranks: list[int], init: str, max_iter: int, tol: float,
              random_state: int | None, scheduler: str | None, plot: Path | None, as_json: bool,
              test_fraction: float, replicates: int) -> None:
    from distnmf.rank import select_rank

    with scheduler_client(scheduler), _convergence_notes(), err.status(
            f"cross-validating ranks {', '.join(map(str, ranks))} x {replicates} replicates on "
            f"{matrix.shape[0]}x{matrix.shape[1]} ..."):
        report = select_rank(matrix, ranks, test_fraction=test_fraction, replicates=replicates,
                             random_state=0 if random_state is None else random_state, init=init,
                             max_iter=max_iter, tol=tol)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        table = Table(title=f"cross-validated rank of {store}: {test_fraction:g} of the entries held out, "
                            f"{replicates} replicates", title_justify="left")
        for name in ("k", "test RMSE", "± std", "train RMSE"):
            table.add_column(name, justify="right")
        for r in report.table:
            table.add_row(str(r["n_components"]), f"{r['test_rmse']:.5g}", f"{r['test_rmse_std']:.2g}",
                          f"{r['train_rmse']:.5g}")
        out.print(table)
        out.print(f"best k = {report.best_k} (lowest held-out RMSE); one-standard-error k = {report.one_se_k}")
    if plot is not None:
        err.print(f"wrote {report.plot(plot)}")


@app.command()
@user_errors
def svd(
    store: StoreArg,
    k: Annotated[int, typer.Option("-k", "--n-components", help="Number of singular triplets.", show_default=False)],
    random_state: SeedOpt = None,
    scheduler: SchedulerOpt = None,
    save: Annotated[Path | None, typer.Option("--out", help="Write U, S, Vt to this .npz file.")] = None,
) -> None:
    """Randomized truncated SVD of a matrix store (chunked, out-of-core): print the singular values.

    Example: distnmf svd tags.zarr -k 10 --out tags-svd.npz
    """
    from distnmf.init import truncated_svd
    from distnmf.store import open_matrix

    matrix = open_matrix(store)
    with scheduler_client(scheduler), err.status(f"randomized SVD, k={k}, of {matrix.shape[0]}x{matrix.shape[1]} ..."):
        U, S, Vt = truncated_svd(matrix, k, random_state=random_state)
    out.print("singular values: " + " ".join(f"{s:.5g}" for s in S))
    if save is not None:
        err.print(f"wrote {_save_npz(save, U=U, S=S, Vt=Vt)} (U {U.shape}, S {S.shape}, Vt {Vt.shape})")


@app.command()
@user_errors
def plot(
    results: ResultsArg,
    directory: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: RESULTS name + '-plots'.")
                         ] = None,
    matrix: Annotated[str | None, typer.Option("--matrix", help="Source matrix for reconstructions "
                                                "(default: the store the fit read, if it still exists).")] = None,
    rows: Annotated[int, typer.Option("--rows", help="How many rows to show original vs reconstruction for.")] = 4,
) -> None:
    """Write every picture that applies: component images and grid (image data) or topic bars,
    the convergence curve, and originals vs reconstructions.

    Example: distnmf plot faces.nmf.zarr --out faces-plots
    """
    from distnmf import storage
    from distnmf.factors import open_factors
    from distnmf.plots import plot_all

    factors = open_factors(results)
    name = f"{storage.name_of(results).removesuffix('.zarr')}-plots"
    target = directory or (Path(name) if storage.is_url(results) else Path(results).with_name(name))
    with err.status("drawing ..."):
        written = plot_all(factors, target, matrix=matrix, n_rows=rows)
    for name, paths in written.items():
        if isinstance(paths, list):
            out.print(f"{name}: {len(paths)} files in {paths[0].parent}" if paths else f"{name}: none")
        else:
            out.print(f"{name}: {paths}")


add_plugin_commands(app)


if __name__ == "__main__":
    app(prog_name="distnmf")
