"""Each ingester on small files made here, checking the exact matrix, labels and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer
from typer.testing import CliRunner

from distnmf.ingest import (ingest_array, ingest_images, ingest_ratings, ingest_tags, ingest_text,
                            iter_tag_records, load_image)
from distnmf.ingest.cli import app
from distnmf.store import open_matrix


def dense(report) -> np.ndarray:
    X = report.matrix.to_memory()
    return X.toarray() if sp.issparse(X) else X


def leftovers(folder: Path) -> list[str]:
    """Store-like entries (finished or temporary) in a folder."""
    return sorted(p.name for p in folder.iterdir() if ".zarr" in p.name)


# --------------------------------------------------------------------------- arrays


def test_npy_streams_in_blocks(tmp_path):
    a = np.random.default_rng(0).random((103, 7))
    np.save(tmp_path / "a.npy", a)
    report = ingest_array(tmp_path / "a.npy", tmp_path / "a.zarr", block_rows=10)
    np.testing.assert_array_equal(dense(report), a.astype(np.float32))
    assert report.shape == (103, 7) and report.nnz == 103 * 7 and not report.matrix.is_sparse
    assert "103 x 7" in report.summary() and "Nothing was skipped" in report.summary()


def test_csv_with_header_and_index(tmp_path):
    (tmp_path / "m.csv").write_text("id,a,b,c\nr1,1,2,3\n\nr2,0,0.5,4e1\n")
    report = ingest_array(tmp_path / "m.csv", tmp_path / "m.zarr", index=True, block_rows=1)
    np.testing.assert_array_equal(dense(report), [[1, 2, 3], [0, 0.5, 40]])
    assert report.matrix.col_labels.tolist() == ["a", "b", "c"]
    assert report.matrix.row_labels.tolist() == ["r1", "r2"]


def test_whitespace_table_without_header_as_sparse(tmp_path):
    (tmp_path / "m.txt").write_text("1 0 2\n0 0 3\n")
    report = ingest_array(tmp_path / "m.txt", tmp_path / "m.zarr", sparse=True)
    assert report.matrix.is_sparse and report.nnz == 3
    np.testing.assert_array_equal(dense(report), [[1, 0, 2], [0, 0, 3]])
    assert report.matrix.col_labels is None


def test_npz_sparse_dense_and_mtx(tmp_path):
    S = sp.random(40, 30, density=0.1, format="csr", random_state=1, dtype=np.float64)
    sp.save_npz(tmp_path / "s.npz", S)
    scipy.io.mmwrite(tmp_path / "s.mtx", S)
    np.savez(tmp_path / "d.npz", X=S.toarray(), other=np.zeros(3))
    for name in ("s.npz", "s.mtx"):
        report = ingest_array(tmp_path / name, tmp_path / f"{name}.zarr")
        assert report.matrix.is_sparse and report.nnz == S.nnz
        np.testing.assert_array_equal(dense(report), S.toarray().astype(np.float32))
    report = ingest_array(tmp_path / "d.npz", tmp_path / "d.zarr", key="X")
    np.testing.assert_array_equal(dense(report), S.toarray().astype(np.float32))
    with pytest.raises(ValueError, match="holds 2 arrays"):
        ingest_array(tmp_path / "d.npz", tmp_path / "e.zarr")


@pytest.mark.parametrize("content, message", [
    ("1,2\n3,x\n", r"bad\.csv, line 2, column 2: 'x' is not a number"),
    ("1,2\n\n3,-1\n", r"bad\.csv, line 3, column 2: negative value -1\.0"),
    ("1,2\n3,4,5\n", r"bad\.csv, line 2: 3 columns, expected 2"),
    ("1,2\n3,nan\n", r"bad\.csv, line 2, column 2: non-finite"),
])
def test_bad_csv_names_the_line_and_leaves_nothing(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        ingest_array(tmp_path / "bad.csv", tmp_path / "bad.zarr", block_rows=1)
    assert leftovers(tmp_path) == []


def test_array_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        ingest_array(tmp_path / "missing.npy", tmp_path / "x.zarr")
    np.save(tmp_path / "v.npy", np.ones(5))
    with pytest.raises(ValueError, match="1-D"):
        ingest_array(tmp_path / "v.npy", tmp_path / "x.zarr")
    np.save(tmp_path / "n.npy", -np.ones((3, 2)))
    with pytest.raises(ValueError, match="negative"):
        ingest_array(tmp_path / "n.npy", tmp_path / "x.zarr")
    (tmp_path / "a.parquet").write_text("")
    with pytest.raises(ValueError, match="unknown array format"):
        ingest_array(tmp_path / "a.parquet", tmp_path / "x.zarr")
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- images


def make_image_folder(root: Path) -> dict[str, np.ndarray]:
    """Three 8x8 grayscale-equivalent images (one RGB, one in a sub-folder), one 16x12 image,
    a text file and a truncated PNG. Returns the expected rows of the 8x8 ones."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    expected = {}
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(gray).save(root / "b.png")
    expected["b.png"] = gray.reshape(-1) / np.float32(255)
    rgb = np.repeat(rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), 3, axis=2)
    Image.fromarray(rgb).save(root / "sub" / "a.png")
    expected["sub/a.png"] = rgb[..., 0].reshape(-1) / np.float32(255)
    Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).save(root / "c.bmp")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes((root / "b.png").read_bytes()[:40])
    (root / ".hidden.png").write_bytes((root / "b.png").read_bytes())
    return expected


def test_images_exact_rows_labels_and_skips(tmp_path):
    expected = make_image_folder(tmp_path / "imgs")
    report = ingest_images(tmp_path / "imgs", tmp_path / "imgs.zarr", image_shape=(8, 8), client=False,
                           batch_size=2)
    m = report.matrix
    assert m.row_labels.tolist() == ["b.png", "c.bmp", "sub/a.png"]
    assert m.image_shape == (8, 8) and m.shape == (3, 64)
    X = dense(report)
    np.testing.assert_array_equal(X[0], expected["b.png"])
    np.testing.assert_array_equal(X[2], expected["sub/a.png"])
    resized = Image.open(tmp_path / "imgs" / "c.bmp").convert("L").resize((8, 8), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(X[1], np.asarray(resized, dtype=np.float32).reshape(-1) / 255)
    assert X.min() >= 0 and X.max() <= 1
    assert report.n_skipped == 2
    assert sorted(where for where, _ in report.skipped) == ["broken.png", "notes.txt"]
    assert "Skipped 2" in report.summary()


def test_images_parallel_equals_in_process(tmp_path, dask_client):
    make_image_folder(tmp_path / "imgs")
    local = ingest_images(tmp_path / "imgs", tmp_path / "local.zarr", image_shape=(6, 5), client=False)
    remote = ingest_images(tmp_path / "imgs", tmp_path / "remote.zarr", image_shape=(6, 5), batch_size=1)
    np.testing.assert_array_equal(dense(local), dense(remote))
    assert remote.matrix.row_labels.tolist() == local.matrix.row_labels.tolist()
    assert remote.n_skipped == local.n_skipped == 2
    assert remote.matrix.image_shape == (6, 5)


def test_images_crop_keeps_the_centre(tmp_path):
    img = np.zeros((10, 30), dtype=np.uint8)
    img[:, 10:20] = 255
    (tmp_path / "imgs").mkdir()
    Image.fromarray(img).save(tmp_path / "imgs" / "wide.png")
    row = load_image(tmp_path / "imgs" / "wide.png", (10, 10), crop=True)
    np.testing.assert_array_equal(row, np.ones(100, dtype=np.float32))


def test_images_without_images_fail_cleanly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        ingest_images(tmp_path / "empty", tmp_path / "x.zarr")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="none is a readable image"):
        ingest_images(tmp_path / "text", tmp_path / "x.zarr")
    with pytest.raises(FileNotFoundError):
        ingest_images(tmp_path / "missing", tmp_path / "x.zarr")
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- tags


def write_tag_file(path: Path) -> None:
    lines = [
        json.dumps({"id": "img1", "high_conf_tags": ["cat", "pet"], "low_conf_tags": ["pet", "sofa"]}),
        json.dumps({"id": "img2", "tags": ["cat", "dog"]}),
        "{not json",
        json.dumps({"tags": ["cat"]}),
        json.dumps({"id": "img3", "tags": "cat"}),
        "",
        json.dumps({"id": "img4", "high_conf_tags": ["dog"], "low_conf_tags": []}),
        json.dumps({"id": "img2", "tags": ["pet"]}),
        json.dumps({"id": 5, "tags": ["cat", "pet"]}),
    ]
    path.write_text("\n".join(lines) + "\n")


def test_tags_occurrence_matrix_exact(tmp_path):
    write_tag_file(tmp_path / "t.jsonl")
    report = ingest_tags(tmp_path / "t.jsonl", tmp_path / "t.zarr")
    m = report.matrix
    assert m.is_sparse
    assert m.row_labels.tolist() == ["img1", "img2", "img4", "5"]
    # columns by decreasing count (cat 3, pet 2, dog 2, sofa 1), ties by name
    assert m.col_labels.tolist() == ["cat", "dog", "pet", "sofa"]
    np.testing.assert_array_equal(dense(report), [[1, 0, 1, 1], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]])
    assert report.n_skipped == 4
    assert [where for where, _ in report.skipped] == ["line 3", "line 4", "line 5", "line 8"]
    reasons = dict(report.skipped)
    assert "no usable 'id'" in reasons["line 4"] and "list of strings" in reasons["line 5"]
    assert "duplicate id 'img2' (first seen at line 2)" in reasons["line 8"]
    assert report.details["tag_counts"].tolist() == [3, 2, 2, 1]


def test_tags_min_count_and_seed_tfidf(tmp_path):
    write_tag_file(tmp_path / "t.jsonl")
    report = ingest_tags(tmp_path / "t.jsonl", tmp_path / "t.zarr", min_count=2, tfidf=True)
    assert report.matrix.col_labels.tolist() == ["cat", "dog", "pet"]
    occurrence = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 1]], dtype=np.float64)
    # the seed, on its tag x image matrix: idf = log(n_images / (sum over images + 0.1))
    seed_matrix = occurrence.T
    idf = np.log(seed_matrix.shape[1] / (np.sum(seed_matrix, axis=1).squeeze() + 0.1))
    expected = (seed_matrix * idf[:, None]).T
    np.testing.assert_allclose(dense(report), expected, rtol=1e-6)
    np.testing.assert_allclose(report.details["idf"], idf)


def test_tags_strict_names_the_line_and_leaves_nothing(tmp_path):
    write_tag_file(tmp_path / "t.jsonl")
    with pytest.raises(ValueError, match=r"t\.jsonl, line 3: "):
        ingest_tags(tmp_path / "t.jsonl", tmp_path / "t.zarr", strict=True)
    with pytest.raises(ValueError, match="no tag is on at least min_count=9"):
        ingest_tags(tmp_path / "t.jsonl", tmp_path / "t.zarr", min_count=9)
    (tmp_path / "junk.jsonl").write_text("[1, 2]\n{oops\n")
    with pytest.raises(ValueError, match="no well-formed tag record"):
        ingest_tags(tmp_path / "junk.jsonl", tmp_path / "t.zarr")
    assert leftovers(tmp_path) == []


def test_tags_json_document(tmp_path):
    doc = {"x": {"high_conf_tags": ["a"], "low_conf_tags": ["b"]}, "y": ["b", "c", "b"], "z": 3}
    (tmp_path / "t.json").write_text(json.dumps(doc))
    assert list(iter_tag_records(tmp_path / "t.json")) == [("x", ["a", "b"]), ("y", ["b", "c"])]
    report = ingest_tags(tmp_path / "t.json", tmp_path / "t.zarr")
    assert report.matrix.col_labels.tolist() == ["b", "a", "c"]
    np.testing.assert_array_equal(dense(report), [[1, 1, 0], [1, 0, 1]])
    assert report.skipped[0][0] == "record 'z'"


# --------------------------------------------------------------------------- text


DOCS = [
    "The cat sat on the mat with another cat",
    "Dogs chase cats; the dog barks",
    "the and of",            # only stop words: an empty row
    "to be or not to be",    # a partition of stop words only (with the line above)
    "Cats and dogs, cats and dogs, mats",
    "A mat for the dog",
]


def test_text_lines_match_scikit_learn(tmp_path):
    (tmp_path / "docs.txt").write_text("\n".join(DOCS[:3]) + "\n\n" + "\n".join(DOCS[3:]) + "\n")
    report = ingest_text(tmp_path / "docs.txt", tmp_path / "docs.zarr", docs_per_partition=2, client=False)
    vectorizer = TfidfVectorizer(stop_words="english")
    expected = vectorizer.fit_transform(DOCS).toarray()
    assert report.matrix.col_labels.tolist() == vectorizer.get_feature_names_out().tolist()
    np.testing.assert_allclose(dense(report), expected, rtol=1e-6, atol=1e-7)
    assert report.matrix.row_labels.tolist() == ["1", "2", "3", "5", "6", "7"]
    np.testing.assert_allclose(report.details["idf"], vectorizer.idf_)


def test_text_folder_parallel_with_limits(tmp_path, dask_client):
    folder = tmp_path / "articles"
    (folder / "more").mkdir(parents=True)
    names = ["a.txt", "b.txt", "c.txt", "more/d.txt", "more/e.txt", "more/f.txt"]
    for name, doc in zip(names, DOCS):
        (folder / name).write_text(doc)
    report = ingest_text(folder, tmp_path / "docs.zarr", docs_per_partition=2, min_df=2, max_df=0.9)
    vectorizer = TfidfVectorizer(stop_words="english", min_df=2, max_df=0.9)
    expected = vectorizer.fit_transform(DOCS).toarray()
    assert report.matrix.col_labels.tolist() == vectorizer.get_feature_names_out().tolist()
    np.testing.assert_allclose(dense(report), expected, rtol=1e-6, atol=1e-7)
    assert report.matrix.row_labels.tolist() == names


def test_text_max_features_keeps_the_most_frequent(tmp_path):
    (tmp_path / "docs.txt").write_text("\n".join(DOCS))
    report = ingest_text(tmp_path / "docs.txt", tmp_path / "docs.zarr", max_features=2, docs_per_partition=3)
    assert report.matrix.col_labels.tolist() == ["cats", "dogs"]  # 3 each; cat, dog 2 each
    with pytest.raises(ValueError, match="no term is left"):
        ingest_text(tmp_path / "docs.txt", tmp_path / "none.zarr", min_df=5)
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no documents"):
        ingest_text(tmp_path / "blank.txt", tmp_path / "none.zarr")
    assert leftovers(tmp_path) == ["docs.zarr"]


# --------------------------------------------------------------------------- ratings


def test_ratings_exact_with_header_aliases(tmp_path):
    (tmp_path / "r.csv").write_text("userId,movieId,rating,timestamp\n"
                                    "7,m2,4.5,1\n3,m1,3,2\n7,m1,0,3\n\n3,m9,5,4\n7,m2,2,5\n")
    report = ingest_ratings(tmp_path / "r.csv", tmp_path / "r.zarr")
    m = report.matrix
    assert m.row_labels.tolist() == ["7", "3"] and m.col_labels.tolist() == ["m2", "m1", "m9"]
    np.testing.assert_array_equal(dense(report), [[2, 0, 0], [0, 3, 5]])
    assert report.nnz == 4  # the 0 rating is an explicit entry
    assert "1 repeated (user, item) pairs kept their last rating" in report.summary()
    with pytest.raises(ValueError, match=r"r\.csv, line 7: the same user and item as line 2"):
        ingest_ratings(tmp_path / "r.csv", tmp_path / "dup.zarr", duplicates="error")


def test_ratings_positions_without_header(tmp_path):
    (tmp_path / "r.tsv").write_text("5\tu1\ta\n2\tu2\tb\n")
    report = ingest_ratings(tmp_path / "r.tsv", tmp_path / "r.zarr", user_col=1, item_col=2, rating_col=0)
    assert report.matrix.row_labels.tolist() == ["u1", "u2"]
    np.testing.assert_array_equal(dense(report), [[5, 0], [0, 2]])


@pytest.mark.parametrize("content, message", [
    ("user,item,rating\na,x,4\nb,y,-1\n", r"r\.csv, line 3: negative rating '-1'"),
    ("user,item,rating\na,x,4\nb,y,good\n", r"r\.csv, line 3: rating 'good' is not a number"),
    ("user,item,rating\na,x\n", r"r\.csv, line 2: 2 fields, expected at least 3"),
    ("who,what,stars\na,x,4\n", r"no user column in the header"),
    ("user,item,rating\n", r"holds no ratings"),
])
def test_bad_ratings(tmp_path, content, message):
    (tmp_path / "r.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        ingest_ratings(tmp_path / "r.csv", tmp_path / "r.zarr")
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- command line


def test_cli_commands(tmp_path):
    runner = CliRunner()
    write_tag_file(tmp_path / "t.jsonl")
    result = runner.invoke(app, ["tags", str(tmp_path / "t.jsonl"), str(tmp_path / "t.zarr"),
                                 "--min-count", "2", "--tfidf", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "4 x 3" in result.output and "Skipped 4" in result.output
    assert open_matrix(tmp_path / "t.zarr").col_labels.tolist() == ["cat", "dog", "pet"]

    make_image_folder(tmp_path / "imgs")
    result = runner.invoke(app, ["images", str(tmp_path / "imgs"), str(tmp_path / "i.zarr"), "--shape", "4x6"])
    assert result.exit_code == 0, result.output
    assert open_matrix(tmp_path / "i.zarr").image_shape == (4, 6)

    (tmp_path / "docs.txt").write_text("\n".join(DOCS))
    result = runner.invoke(app, ["text", str(tmp_path / "docs.txt"), str(tmp_path / "d.zarr"), "--min-df", "2"])
    assert result.exit_code == 0, result.output

    (tmp_path / "r.csv").write_text("u,i,score\na,x,4\nb,y,1\n")
    result = runner.invoke(app, ["ratings", str(tmp_path / "r.csv"), str(tmp_path / "r.zarr"),
                                 "--user-col", "u", "--item-col", "i", "--rating-col", "score"])
    assert result.exit_code == 0, result.output
    assert open_matrix(tmp_path / "r.zarr").shape == (2, 2)

    np.save(tmp_path / "a.npy", np.eye(3))
    result = runner.invoke(app, ["array", str(tmp_path / "a.npy"), str(tmp_path / "a.zarr"), "--sparse"])
    assert result.exit_code == 0, result.output
    assert open_matrix(tmp_path / "a.zarr").nnz == 3


def test_cli_bad_input_exits_nonzero(tmp_path):
    runner = CliRunner()
    write_tag_file(tmp_path / "t.jsonl")
    result = runner.invoke(app, ["tags", str(tmp_path / "t.jsonl"), str(tmp_path / "t.zarr"), "--strict"])
    assert result.exit_code == 1 and "line 3" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["images", str(tmp_path / "empty"), str(tmp_path / "i.zarr")])
    assert result.exit_code == 1 and "holds no files" in result.output
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")
    result = runner.invoke(app, ["array", str(tmp_path / "bad.csv"), str(tmp_path / "a.zarr")])
    assert result.exit_code == 1 and "line 2, column 2" in result.output
    result = runner.invoke(app, ["images", str(tmp_path), str(tmp_path / "i.zarr"), "--shape", "big"])
    assert result.exit_code != 0
    assert leftovers(tmp_path) == []
