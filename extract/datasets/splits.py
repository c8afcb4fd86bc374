"""What a resolved dataset is: named splits of sample ids, labels and a way to load image i, plus a fingerprint."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

TEST_SPLIT_NAMES = ("test", "val")  # folder names and table values that mean the test split


@dataclass
class Split:
    """One split: sample identities, integer labels, and a loader for image i."""

    name: str
    ids: list[str]
    labels: np.ndarray
    source: object = field(repr=False)
    # (size, mtime_ns) of each image file, as the fingerprint hashes them: kept with the features, so that a later
    # entry of a changed dataset can take the rows of the files it still holds unchanged. None: not files.
    stamps: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Image.Image:
        return self.source.image(index)

    def rows(self, start: int, stop: int) -> Split:
        """Rows [start, stop) as a split of their own (one rank's share under torchrun)."""
        return self.subset(np.arange(start, stop))

    def subset(self, rows: np.ndarray) -> Split:
        """The given rows, in that order, as a split of their own."""
        return Split(self.name, [self.ids[i] for i in rows], self.labels[rows], _Rows(self.source, rows),
                     None if self.stamps is None else self.stamps[rows])


@dataclass
class _Rows:
    source: object
    rows: np.ndarray

    def image(self, index: int) -> Image.Image:
        return self.source.image(int(self.rows[index]))


@dataclass
class Dataset:
    """A resolved dataset: what it is called, its classes, its splits and a fingerprint of its content."""

    name: str
    class_names: list[str]
    splits: dict[str, Split]
    fingerprint: str
    source: str = ""
    limit_per_class: int | None = None
    train_per_class: int | None = None  # the train split cut to the first N of each class, the test split whole
    note: str = ""  # how the splits were made where the user did not make them, and which files were left out

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in self.name).strip("-") or "dataset"

    @functools.cached_property
    def test_copies(self) -> list[tuple[str, str]]:
        """`copies_across_splits`, read once per dataset (`compare` fine-tunes several times on one)."""
        from extract.datasets.files import copies_across_splits  # files builds on this module

        return copies_across_splits(self)


def first_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Row numbers of the first `limit` samples of each class, in their order; all rows for None."""
    if limit is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        keep[np.flatnonzero(labels == label)[:limit]] = True
    return np.flatnonzero(keep)


def keep_train_per_class(dataset: Dataset, limit: int) -> Dataset:
    """A new dataset with the first `limit` train images of each class and the whole test split: the points of a
    learning curve are scored on one test split. The dataset itself, unchanged, where no class has more."""
    train = dataset.splits["train"]
    rows = first_per_class(train.labels, limit)
    if len(rows) == len(train):
        return dataset
    fingerprint = hashlib.sha256(f"{dataset.fingerprint}:train_per_class={limit}".encode()).hexdigest()
    return replace(dataset, splits={**dataset.splits, "train": train.subset(rows)}, fingerprint=fingerprint,
                   train_per_class=limit)
