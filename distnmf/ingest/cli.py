"""``distnmf ingest ...``: build matrix stores from arrays, image folders, tag sets, text, ratings.

A Typer sub-app; ``distnmf/cli.py`` mounts it as ``ingest``. Every command shows progress on
a terminal, prints the ingest's one-paragraph summary, and exits with status 1 and a one-line
message on bad input (leaving no store behind).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

import distnmf.ingest as ingesters  # loads each ingester on first use: `distnmf --help` stays fast
from distnmf.console import scheduler_client, user_errors

app = typer.Typer(help="Build a matrix store from the data you have: images, tags, text, ratings or arrays.",
                  no_args_is_help=True)

Store = Annotated[str, typer.Argument(help="Matrix store to create: a folder, or a URL such as "
                                           "s3://bucket/prefix/x.zarr.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")]
Compression = Annotated[str, typer.Option(help="Chunk compression: none, lz4 or zstd.")]
Progress = Annotated[bool | None, typer.Option("--progress/--no-progress",
                                               help="Progress bars (default: only on a terminal).")]
Scheduler = Annotated[str | None, typer.Option(help="Dask scheduler address (tcp://host:8786) to run on; "
                                                    "default: in this process.")]


def _run(ingest: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an ingest and print its summary."""
    if kwargs.get("compression") == "none":
        kwargs["compression"] = None
    report = ingest(*args, **kwargs)
    typer.echo(report.summary())
    return report


def _shape(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"expected HxW such as 64x64, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise typer.BadParameter(f"expected HxW with positive sizes such as 64x64, got {text!r}")
    return values[0], values[1]


def _df(text: str) -> int | float:
    """A document frequency: an integer count (``5``) or a fraction (``0.5``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"expected a document count or a fraction, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"a fraction of documents must be in [0, 1], got {value}")
    return value


def _column(text: str | None) -> str | int | None:
    return int(text) if text is not None and text.isdigit() else text


@app.command()
@user_errors
def images(
    folder: Annotated[Path, typer.Argument(help="Folder searched recursively for images.")],
    store: Store,
    shape: Annotated[str, typer.Option(help="Size HxW every image is resized to.")] = "64x64",
    crop: Annotated[bool, typer.Option(help="Centre-crop to the aspect ratio instead of stretching.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images decoded per task.")] = 256,
    scheduler: Scheduler = None,
    compression: Compression = "none",
    overwrite: Overwrite = False,
    progress: Progress = None,
) -> None:
    """Images -> one grayscale row per image, in [0, 1].

    Files that are not images are skipped and counted. Example:

        distnmf ingest images ./cats cats.zarr --shape 64x64
    """
    with scheduler_client(scheduler) as client:
        _run(ingesters.ingest_images, folder, store, image_shape=_shape(shape), crop=crop, batch_size=batch_size,
             client=client, compression=compression, overwrite=overwrite, show_progress=progress)


@app.command()
@user_errors
def tags(
    source: Annotated[Path, typer.Argument(help="JSON Lines tag records (or a .json document).")],
    store: Store,
    min_count: Annotated[int, typer.Option(help="Keep tags on at least this many items "
                                                "(the seed's 'more than 20' is 21).")] = 1,
    max_tags: Annotated[int | None, typer.Option(help="Then keep only this many most frequent tags.")] = None,
    tfidf: Annotated[bool, typer.Option(help="Weight by the seed's idf ln(n_items / (df + 0.1)).")] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first malformed record.")] = False,
    id_field: Annotated[str, typer.Option(help="Record field holding the item id.")] = "id",
    tag_field: Annotated[list[str] | None, typer.Option(
        help="Record field merged into the tags; repeat for several (default: tags, high_conf_tags and "
             "low_conf_tags).")] = None,
    compression: Compression = "none",
    overwrite: Overwrite = False,
    progress: Progress = None,
) -> None:
    """Tag records -> sparse item x tag occurrence (or tf-idf) matrix.

    Malformed records are reported by line and skipped (or stop the run with --strict). Example:

        distnmf ingest tags tags.jsonl tags.zarr --min-count 21 --tfidf
    """
    _run(ingesters.ingest_tags, source, store, min_count=min_count, max_tags=max_tags, tfidf=tfidf, strict=strict,
         id_field=id_field, **({"tag_fields": tuple(tag_field)} if tag_field else {}),
         compression=compression, overwrite=overwrite, show_progress=progress)


@app.command()
@user_errors
def text(
    source: Annotated[Path, typer.Argument(help="A file (one document per line) or a folder (one per file).")],
    store: Store,
    max_features: Annotated[int | None, typer.Option(help="Keep at most this many most frequent terms.")] = None,
    min_df: Annotated[str, typer.Option(help="Minimum document frequency: a count (5) or a fraction (0.01).")] = "1",
    max_df: Annotated[str, typer.Option(help="Maximum document frequency: a count or a fraction.")] = "1.0",
    stop_words: Annotated[bool, typer.Option("--stop-words/--no-stop-words",
                                             help="Drop scikit-learn's English stop words.")] = True,
    docs_per_partition: Annotated[int, typer.Option(help="Documents per parallel task.")] = 10_000,
    scheduler: Scheduler = None,
    compression: Compression = "none",
    overwrite: Overwrite = False,
    progress: Progress = None,
) -> None:
    """Documents -> sparse tf-idf matrix with the terms as column labels.

    Same result as scikit-learn's TfidfVectorizer, computed over partitions. Example:

        distnmf ingest text articles.txt articles.zarr --max-features 20000 --min-df 5
    """
    with scheduler_client(scheduler) as client:
        _run(ingesters.ingest_text, source, store, max_features=max_features, min_df=_df(min_df), max_df=_df(max_df),
             stop_words="english" if stop_words else None, docs_per_partition=docs_per_partition,
             client=client, compression=compression, overwrite=overwrite, show_progress=progress)


@app.command()
@user_errors
def ratings(
    source: Annotated[Path, typer.Argument(help="CSV/TSV with one (user, item, rating) per line.")],
    store: Store,
    user_col: Annotated[str | None, typer.Option(help="User column: header name or 0-based position.")] = None,
    item_col: Annotated[str | None, typer.Option(help="Item column: header name or 0-based position.")] = None,
    rating_col: Annotated[str | None, typer.Option(help="Rating column: header name or 0-based position.")] = None,
    header: Annotated[bool | None, typer.Option(
        "--header/--no-header", help="Whether the first line names the columns (default: detected).")] = None,
    delimiter: Annotated[str | None, typer.Option(help="Cell separator (default: from the suffix or sniffed).")] = None,
    duplicates: Annotated[str, typer.Option(help="A pair rated twice: keep the 'last' rating or 'error'.")] = "last",
    compression: Compression = "none",
    overwrite: Overwrite = False,
    progress: Progress = None,
) -> None:
    """Rating table -> sparse user x item matrix with user and item labels.

    Example:

        distnmf ingest ratings ratings.csv ratings.zarr --user-col userId --item-col movieId
    """
    _run(ingesters.ingest_ratings, source, store, user_col=_column(user_col), item_col=_column(item_col),
         rating_col=_column(rating_col), header=header, delimiter=delimiter, duplicates=duplicates,
         compression=compression, overwrite=overwrite, show_progress=progress)


@app.command()
@user_errors
def array(
    source: Annotated[Path, typer.Argument(help=".npy, .npz (scipy.sparse or dense), .mtx, or CSV/TSV of numbers.")],
    store: Store,
    sparse: Annotated[bool | None, typer.Option("--sparse/--dense",
                                                help="Storage layout (default: sparse for sparse inputs).")] = None,
    key: Annotated[str | None, typer.Option(help="Array to read from a dense .npz holding several.")] = None,
    delimiter: Annotated[str | None, typer.Option(
        help="CSV cell separator (default: from the suffix or sniffed).")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header",
                                                help="Whether the first CSV line holds column labels "
                                                     "(default: detected).")] = None,
    index: Annotated[bool, typer.Option(help="The first CSV column holds row labels.")] = False,
    compression: Compression = "none",
    overwrite: Overwrite = False,
    progress: Progress = None,
) -> None:
    """Numeric array file -> matrix store, streamed by row blocks for .npy and CSV.

    Example:

        distnmf ingest array faces.npy faces.zarr
    """
    _run(ingesters.ingest_array, source, store, sparse=sparse, key=key, delimiter=delimiter, header=header, index=index,
         compression=compression, overwrite=overwrite, show_progress=progress)
