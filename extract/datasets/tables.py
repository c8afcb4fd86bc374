"""A CSV (or TSV) table of image paths and labels, with an optional split column."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from extract.datasets.files import files_dataset, held_out_note, hold_out
from extract.datasets.splits import TEST_SPLIT_NAMES, Dataset
from extract.errors import UsageError

CSV_SUFFIXES = (".csv", ".tsv")


IMAGE_COLUMNS = ("image", "path", "file", "filename", "filepath", "image_path", "img")


LABEL_COLUMNS = ("label", "class", "category", "target", "class_name")


SPLIT_COLUMN = "split"


def table_dataset(table: Path, limit_per_class: int | None) -> Dataset:
    """A table with a header naming the image column (paths relative to the table's folder) and the label column,
    and optionally a `split` column (train, test or val); without it, `hold_out` makes the test split."""
    columns, rows = _read_table(table)
    header = {column.strip().lower(): column for column in columns}
    image_column = next((header[c] for c in IMAGE_COLUMNS if c in header), None)
    label_column = next((header[c] for c in LABEL_COLUMNS if c in header), None)
    if image_column is None or label_column is None:
        raise UsageError(f"{table} needs a header row naming its image column ({', '.join(IMAGE_COLUMNS)}) and its "
                         f"label column ({', '.join(LABEL_COLUMNS)}); it has {', '.join(columns)}")
    split_column = header.get(SPLIT_COLUMN)
    root = table.parent
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    first_line: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        file, label = (row[image_column] or "").strip(), (row[label_column] or "").strip()  # None: a short row
        if not file or not label:
            raise UsageError(f"{table} line {number}: an empty image path or label; fill it in or remove the line")
        if first_line.setdefault(file, number) != number:
            raise UsageError(f"{table} line {number}: image {file} is listed again (first on line {first_line[file]}); "
                             "list each image once")
        split = (row[split_column] or "").strip().lower() if split_column else "train"
        split = "test" if split in TEST_SPLIT_NAMES else split
        if split not in by_split:
            raise UsageError(f"{table} line {number}: split {row[split_column]!r}; use train, test or val")
        if not (root / file).is_file():
            raise UsageError(f"{table} line {number}: image {file} does not exist under {root} (paths are read "
                             "relative to the table's folder)")
        by_split[split].setdefault(label, []).append(file)
    train, test = by_split["train"], by_split["test"]
    if len(train) < 2:
        raise UsageError(f"{table} holds {len(train)} label(s) in its train rows; a classifier needs at least 2")
    notes = []
    if not test:
        train, test = hold_out(train)
        notes.append(held_out_note(f"no test rows in {table.name}"))
    elif set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)) or "-", sorted(set(test) - set(train)) or "-"
        raise UsageError(f"the labels of the train and test rows of {table} differ (only in train: {only_train}; "
                         f"only in test: {only_test}); give every label rows in both splits")
    return files_dataset(f"{root.resolve().name}-{table.stem}", root, train, test, limit_per_class, notes)


def _read_table(table: Path) -> tuple[list[str], list[dict[str, str | None]]]:
    """The header's column names and one dict per row; comma-, semicolon- or tab-separated."""
    try:
        text = table.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {table}: {error}") from None
    first_line = text.partition("\n")[0]
    delimiter = "\t" if table.suffix.lower() == ".tsv" else max(",;\t", key=first_line.count)
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = list(reader)
    if not reader.fieldnames or not rows:
        raise UsageError(f"{table} holds no rows; give a header row and one row per image")
    return list(reader.fieldnames), rows
