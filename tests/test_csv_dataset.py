"""A CSV (or TSV) of image paths and labels as a dataset, Kaggle's way, next to the image folders."""

import shutil

import numpy as np
import pytest

from extract.datasets import resolve_dataset
from extract.errors import UsageError
from extract.store import open_cache
from tests.conftest import QUICK, SAMPLE, run


@pytest.fixture
def own_sample(tmp_path):
    """A copy of the sample to write tables into (the shared one must stay a plain image folder)."""
    return shutil.copytree(SAMPLE, tmp_path / "cifar10-mini")


def write_table(path, rows, delimiter=","):
    path.write_text("\n".join(delimiter.join(row) for row in rows) + "\n")
    return path


def sample_rows(sample_dir, split_column=True):
    """(image, label[, split]) rows for the sample's files, the paths relative to the sample folder."""
    rows = []
    for split in ("train", "test"):
        for file in sorted((sample_dir / split).glob("*/*.jpg")):
            row = [str(file.relative_to(sample_dir)), file.parent.name]
            rows.append(row + (["val" if split == "test" else "train"] if split_column else []))
    return rows


def test_a_table_with_a_split_column_gives_the_folder_datasets_splits(own_sample):
    table = write_table(own_sample / "labels.csv", [["image", "label", "split"], *sample_rows(own_sample)])
    from_table, from_folder = resolve_dataset(str(table)), resolve_dataset(str(own_sample))
    assert from_table.name == "cifar10-mini-labels" and from_table.class_names == from_folder.class_names
    for split in ("train", "test"):
        assert from_table.splits[split].ids == from_folder.splits[split].ids
        np.testing.assert_array_equal(from_table.splits[split].labels, from_folder.splits[split].labels)
    assert from_table.splits["test"].image(0).size == (32, 32)
    relabelled = sample_rows(own_sample)
    relabelled[0][1] = "automobile"
    write_table(table, [["image", "label", "split"], *relabelled])
    assert resolve_dataset(str(table)).fingerprint != from_table.fingerprint  # a label is part of the content


def test_a_table_without_splits_holds_out_a_quarter_of_each_class(sample_dir, tmp_path):
    """Elsewhere than the images, with absolute paths; tab- or semicolon-separated; header names in any case."""
    rows = [["Filename", "Class"], *[[str(sample_dir / row[0]), row[1]] for row in sample_rows(sample_dir, False)]]
    dataset = resolve_dataset(str(write_table(tmp_path / "photos.tsv", rows, "\t")))
    assert len(dataset.splits["train"]) == 300 and len(dataset.splits["test"]) == 100
    assert "25% of each class held out" in dataset.note
    semicolons = write_table(tmp_path / "photos.csv", rows, ";")
    assert resolve_dataset(str(semicolons)).splits["test"].ids == dataset.splits["test"].ids


@pytest.mark.parametrize("rows, message", [
    ([["name", "label"], ["a.jpg", "cat"]], r"needs a header row naming its image column .* it has name, label"),
    ([["image", "label"], ["missing.jpg", "cat"]], r"line 2: image missing\.jpg does not exist under"),
    ([["image", "label", "split"], ["test/cat/0000.jpg", "cat", "holdout"]], r"line 2: split 'holdout'"),
    ([["image", "label"], ["test/cat/0000.jpg", "cat"], ["test/cat/0001.jpg", "cat"]], r"holds 1 label\(s\)"),
    ([["image", "label"], ["test/cat/0000.jpg", ""]], r"line 2: an empty image path or label"),
    ([["image", "label"], ["test/cat/0000.jpg"]], r"line 2: an empty image path or label"),  # a short row
    ([["image", "label"], ["test/cat/0000.jpg", "cat"], ["test/cat/0000.jpg", "dog"]],
     r"line 3: image test/cat/0000\.jpg is listed again \(first on line 2\)"),
    ([["image", "label", "split"], ["test/cat/0000.jpg", "cat", "train"], ["test/dog/0000.jpg", "dog", "train"],
      ["test/cat/0001.jpg", "cat", "test"]], r"labels of the train and test rows .* differ \(only in train: \['dog'\]"),
    ([["image", "label"]], "holds no rows"),
])
def test_bad_tables_are_one_line_errors(own_sample, rows, message):
    table = write_table(own_sample / "bad.csv", rows)
    with pytest.raises(UsageError, match=message):
        resolve_dataset(str(table))


def test_extract_and_classify_from_a_table_as_from_the_folder(own_sample, lite_cache, tmp_path, capsys):
    from classify.__main__ import main as classify
    from extract.__main__ import main as extract

    table = write_table(own_sample / "labels.csv", [["image", "label", "split"], *sample_rows(own_sample)])
    cache = tmp_path / "cache"
    code, _, err = run(extract, ["efficientnet_lite0", str(table), "--cache-dir", str(cache), *QUICK], capsys)
    assert code == 0, err
    (entry,) = cache.glob("cifar10-mini-labels__*.h5")
    table_features, folder_features = open_cache(entry), open_cache(lite_cache)
    for split in ("train", "test"):
        (x, y, ids), (x_ref, y_ref, ids_ref) = table_features.load(split), folder_features.load(split)
        assert list(ids) == list(ids_ref) and np.array_equal(y, y_ref)
        np.testing.assert_allclose(x, x_ref, rtol=1e-5, atol=1e-5)
    code, out, err = run(classify, ["logreg", str(entry), "--cv", "2"], capsys)
    assert code == 0 and "test accuracy" in out, err
    code, _, err = run(extract, ["efficientnet_lite0", str(tmp_path / "nope.csv")], capsys)
    assert code == 2 and err.strip() == f"error: table {tmp_path / 'nope.csv'} does not exist; give a CSV of image " \
                                       "paths and labels, or a folder"


def test_a_label_changed_in_the_table_sends_no_image_through_the_network(own_sample, tmp_path, capsys):
    from extract.__main__ import main

    rows = sample_rows(own_sample)
    table = write_table(own_sample / "labels.csv", [["image", "label", "split"], *rows])
    args = ["efficientnet_lite0", str(table), "--cache-dir", str(tmp_path / "cache"), *QUICK,
            "--limit-per-class", "1000"]  # every image: a limit would let the relabelled one push another out
    code, out, _ = run(main, args, capsys)
    first = open_cache(out.strip())
    assert rows[0][:2] == ["train/airplane/0000.jpg", "airplane"]
    rows[0][1] = "dog"
    write_table(table, [["image", "label", "split"], *rows])
    code, out, err = run(main, args, capsys)
    assert code == 0 and "(0 images in" in err and "; 400 taken from the earlier entry)" in err
    fixed = open_cache(out.strip())
    features, labels, ids = fixed.load("train")
    row = list(ids).index("train/airplane/0000.jpg")
    assert fixed.class_names[labels[row]] == "dog"
    before = dict(zip(first.load("train")[2], first.load("train")[0], strict=True))
    np.testing.assert_array_equal(features, [before[i] for i in ids])
