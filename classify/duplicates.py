"""Test images that are near-copies of train images (re-encoded, resized, cropped a little): found by the cosine
similarity of their features, since their bytes differ. A test set that holds them scores the head on images it has
as good as seen; `extract` already names byte-for-byte copies, this finds the rest.
"""

from __future__ import annotations

import csv
import glob
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classify.conventions import default_layer, output_base
from classify.heads import LayerSelector
from classify.mistakes import GALLERY_SIZE, cached_image_files, plot_images, write_table
from extract.errors import UsageError
from extract.store import open_cache

DEFAULT_THRESHOLD = 0.9  # bench/near_duplicates.py: no other photo named, most single edits found
CHUNK_ROWS = 2048  # test rows per matrix product: 2,048 x 50,000 float32 similarities are 410 MB

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


@dataclass
class Duplicates:
    test_rows: np.ndarray  # test rows whose nearest train image is at or above the threshold, most similar first
    similarity: np.ndarray  # cosine similarity of every test row to its nearest train row
    nearest: np.ndarray  # the nearest train row of every test row
    test_ids: np.ndarray
    train_ids: np.ndarray
    threshold: float
    seconds: float
    csv_path: Path
    png_path: Path | None
    # per head trained on this cache (its FILE.HEAD.predictions.csv): test accuracy on all, on these, on the others
    accuracy_apart: dict[str, tuple[float, float, float]]


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1: the cosine similarity of two rows is then their dot product."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def nearest_train(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each test row, the cosine similarity to its most similar train row and that row's index; a chunk of
    test rows at a time, so memory stays bounded however large the splits."""
    train, test = unit_rows(train.astype(np.float32)), unit_rows(test.astype(np.float32))
    similarity, nearest = np.empty(len(test), dtype=np.float32), np.empty(len(test), dtype=np.int64)
    for start in range(0, len(test), CHUNK_ROWS):
        scores = test[start:start + CHUNK_ROWS] @ train.T
        nearest[start:start + len(scores)] = scores.argmax(axis=1)
        similarity[start:start + len(scores)] = scores[np.arange(len(scores)), nearest[start:start + len(scores)]]
    return similarity, nearest


def find_duplicates(cache_path: str | Path, threshold: float = DEFAULT_THRESHOLD, layer: str | None = None,
                    log: Callable[[str], None] = _logger.info) -> Duplicates:
    """Every test image whose nearest train image is at least `threshold` similar; FILE.duplicates.csv lists them,
    FILE.duplicates.png pictures the first pairs (for image folders and tables)."""
    if not 0 < threshold <= 1:
        raise UsageError(f"--threshold {threshold}: give a cosine similarity above 0 and at most 1, e.g. 0.9")
    cache = open_cache(cache_path)
    chosen = layer or default_layer(cache.layout)
    selector = LayerSelector(cache.layout, chosen)
    train, train_labels, train_ids = cache.load("train")
    test, test_labels, test_ids = cache.load("test")
    selector.fit(train[:2])  # an unknown --layers fails here
    log(f"duplicates: the nearest of {len(train_ids)} train images to each of {len(test_ids)} test images, by "
        f"cosine similarity of the {chosen} features")
    started = time.perf_counter()
    similarity, nearest = nearest_train(selector.transform(train), selector.transform(test))
    test_rows = np.flatnonzero(similarity >= threshold)
    test_rows = test_rows[np.argsort(-similarity[test_rows], kind="stable")]
    base = output_base(cache.path, layer)
    names = cache.class_names
    csv_path = write_table(Path(f"{base}.duplicates.csv"),
                           ["test_id", "train_id", "similarity", "test_label", "train_label"],
                           ([test_ids[row], train_ids[nearest[row]], f"{similarity[row]:.4f}",
                             names[test_labels[row]], names[train_labels[nearest[row]]]] for row in test_rows))
    source = cache.info.dataset_source
    pairs = [(row, test_file, train_file) for row, test_file in cached_image_files(source, test_ids, test_rows)
             for (_, train_file) in cached_image_files(source, train_ids, nearest[[row]])][:GALLERY_SIZE // 2]
    png_path = None
    if pairs:
        files = [file for _, test_file, train_file in pairs for file in (test_file, train_file)]
        captions = [caption for row, test_file, train_file in pairs for caption in (
            f"test {names[test_labels[row]]}\n{test_file.name}",
            f"train {names[train_labels[nearest[row]]]}, {similarity[row]:.3f}\n{train_file.name}")]
        png_path = plot_images(files, captions, Path(f"{base}.duplicates.png"),
                               f"test images and their most similar train image ({len(pairs)} of the {len(test_rows)} "
                               f"pairs at cosine >= {threshold:g}, most similar first)\n{cache.info.backbone} "
                               f"{chosen} features")
    return Duplicates(test_rows, similarity, nearest, test_ids, train_ids, threshold, time.perf_counter() - started,
                      csv_path, png_path, accuracy_apart(base, test_ids, test_rows))


def accuracy_apart(base: Path, test_ids: np.ndarray, rows: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """For each head whose test predictions lie beside the cache (FILE.HEAD.predictions.csv, written by
    `classify HEAD`): its accuracy on every test image, on the `rows` and on the others; how much the near-copies
    lift the score it reported."""
    chosen = np.zeros(len(test_ids), dtype=bool)
    chosen[rows] = True
    apart = {}
    for path in sorted(base.parent.glob(f"{glob.escape(base.name)}.*.predictions.csv")):
        head = path.name[len(base.name) + 1:-len(".predictions.csv")]
        with open(path, newline="") as file:
            right = {row["id"]: row["true"] == row["predicted"] for row in csv.DictReader(file)}
        if set(right) != set(test_ids) or "." in head:  # another split's, or another layer's head
            continue
        hits = np.array([right[i] for i in test_ids])
        apart[head] = (float(hits.mean()), float(hits[chosen].mean()) if chosen.any() else float("nan"),
                       float(hits[~chosen].mean()) if (~chosen).any() else float("nan"))
    return apart
