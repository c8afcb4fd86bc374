"""Datasets: a name, a folder or a table becomes train/test splits of (image, label) with a fingerprint.

Each split knows its samples' identities (file path or index) and how to load one image as RGB; nothing here knows
about models or caches. `resolve_dataset` is the one door: `folders`, `tables` and `builtin` are the kinds it opens,
`files` what the file-based ones share, `images` the decoding.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import NoReturn

from extract.datasets.builtin import BUILTIN_DATASETS, TORCHVISION_DATASETS, digits_dataset, torchvision_dataset
from extract.datasets.files import copies_across_splits, copies_warning, hold_out, images_under
from extract.datasets.folders import folder_dataset
from extract.datasets.images import IMAGE_EXTENSIONS, BadImageError, load_image, to_rgb
from extract.datasets.splits import Dataset, Split, keep_train_per_class
from extract.datasets.tables import CSV_SUFFIXES, table_dataset
from extract.errors import UsageError

__all__ = ["BUILTIN_DATASETS", "CSV_SUFFIXES", "IMAGE_EXTENSIONS", "TORCHVISION_DATASETS", "BadImageError", "Dataset",
           "Split", "copies_across_splits", "copies_warning", "hold_out", "images_under", "load_image",
           "keep_train_per_class", "resolve_dataset", "sample_file", "to_rgb"]


def resolve_dataset(spec: str, data_root: str | Path = "data", limit_per_class: int | None = None,
                    download: bool = True, train_per_class: int | None = None) -> Dataset:
    """A dataset name (torchvision's, or `digits`) or an image-folder path, resolved to train/test splits.

    `limit_per_class` cuts every split to the first N images of each class (quick runs); `train_per_class` cuts the
    train split only (the points of a learning curve, scored on one test split)."""
    for option, value in (("--limit-per-class", limit_per_class), ("--train-per-class", train_per_class)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be 1 or more, not {value}")
    key = spec.lower().replace("-", "").replace("_", "")
    if key in TORCHVISION_DATASETS and not Path(spec).exists():
        dataset = torchvision_dataset(key, Path(data_root), limit_per_class, download)
    elif key in BUILTIN_DATASETS and not Path(spec).exists():
        dataset = digits_dataset(limit_per_class)
    elif Path(spec).suffix.lower() in CSV_SUFFIXES:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(f"table {path} does not exist; give a CSV of image paths and labels, or a folder")
        dataset = table_dataset(path, limit_per_class)
        spec = str(path.resolve())
    elif Path(spec).expanduser().exists() or "/" in spec or spec.startswith("."):
        path = Path(spec).expanduser()
        dataset = folder_dataset(path, limit_per_class)
        spec = str(path.resolve())
    else:
        _unknown_dataset(spec, key)
    dataset.source, dataset.limit_per_class = spec, limit_per_class
    return keep_train_per_class(dataset, train_per_class) if train_per_class else dataset


def sample_file(source: str, sample_id: str) -> Path | None:
    """The image file a cached sample id names, given the cache's `dataset_source`: ids of image folders and tables
    are paths relative to the folder or the table's folder; None for ids that are indices (torchvision's datasets,
    digits) or a dataset no longer where it was."""
    root = Path(source)
    if root.suffix.lower() in CSV_SUFFIXES:
        root = root.parent
    file = root / sample_id
    return file if root.is_absolute() and file.is_file() else None


def _unknown_dataset(spec: str, key: str) -> NoReturn:
    names = sorted(TORCHVISION_DATASETS) + list(BUILTIN_DATASETS)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(f"unknown dataset {spec!r}: {hint}give one of {', '.join(names)}, "
                     "a folder of class folders (or of train/ and test/ holding them), or a CSV of images and labels")
