"""The test split image by image: every prediction in a table, and the wrong ones in a picture, so that what the head
gets wrong (a look-alike class, a mislabelled or ambiguous image) can be seen, not only how often. The picture is
drawn here for the train images `suspects` ranks too."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from extract.datasets import BadImageError, load_image, sample_file

GALLERY_SIZE = 30
GALLERY_COLUMNS = 6


def write_table(path: Path, header: list[str], rows: Iterable[list]) -> Path:
    """A CSV of `rows` under `header`: the tables written beside a cache (predictions, suspects, duplicates)."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def save_test_predictions(csv_path: Path, png_path: Path, source: str, ids: np.ndarray, y_true: np.ndarray,
                          y_pred: np.ndarray, probabilities: np.ndarray | None, class_names: list[str],
                          title: str) -> Path | None:
    """One row per test image in `csv_path` (its id: the file, for image folders and tables; true and predicted
    class; the probability of the predicted class, empty for heads without probabilities), and the wrong ones
    pictured in `png_path` (`plot_mistakes`), which is returned, or None where nothing is pictured."""
    confidence = None if probabilities is None else probabilities[np.arange(len(y_pred)), y_pred]
    shown = [""] * len(y_pred) if confidence is None else [f"{p:.4f}" for p in confidence]
    write_table(csv_path, ["id", "true", "predicted", "probability"],
                ([sample_id, class_names[true], class_names[predicted], p]
                 for sample_id, true, predicted, p in zip(ids, y_true, y_pred, shown, strict=True)))
    return plot_mistakes(source, ids, y_true, y_pred, confidence, class_names, png_path, title)


def read_test_predictions(csv_path: str | Path, class_names: list[str]) -> np.ndarray:
    """save_test_predictions' predicted classes back, as indices into `class_names`, in test order."""
    index = {name: k for k, name in enumerate(class_names)}
    with open(csv_path, newline="") as file:
        return np.array([index[row["predicted"]] for row in csv.DictReader(file)], dtype=np.int64)


def mistake_order(y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray | None) -> np.ndarray:
    """Indices of the wrong predictions, each true class in turn: every class's first mistake, then every class's
    second, ..., so a picture of the first few shows every class; within a class the most confident mistake comes
    first (where there are probabilities; else test order), those being the likeliest labelling errors."""
    wrong = np.flatnonzero(y_true != y_pred)
    if confidence is not None:
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    wrong = wrong[np.argsort(y_true[wrong], kind="stable")]
    first_of_class = np.searchsorted(y_true[wrong], y_true[wrong])
    rank_in_class = np.arange(len(wrong)) - first_of_class
    return wrong[np.lexsort((y_true[wrong], rank_in_class))]


def cached_image_files(source: str, ids: np.ndarray, rows: np.ndarray) -> list[tuple[int, Path]]:
    """Up to GALLERY_SIZE of `rows`, in order, with the image file each one's id names; none where the ids are not
    files (torchvision's datasets, digits) or the dataset has moved."""
    files = ((row, sample_file(source, str(ids[row]))) for row in rows)
    return list(itertools.islice(((row, file) for row, file in files if file is not None), GALLERY_SIZE))


def plot_mistakes(source: str, ids: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                  confidence: np.ndarray | None, class_names: list[str], path: Path, title: str) -> Path | None:
    """Up to GALLERY_SIZE wrong test images in `mistake_order`, each with its true and predicted class (and that
    class's probability), as a PNG; None where there are no image files to show or no mistake."""
    shown = cached_image_files(source, ids, mistake_order(y_true, y_pred, confidence))
    if not shown:
        return None
    captions = [f"{class_names[y_true[i]]}\n-> {class_names[y_pred[i]]}"
                f"{'' if confidence is None else f' {confidence[i]:.2f}'}\n{file.name}" for i, file in shown]
    order = ("its most confident mistakes first (the number: the probability of the predicted class)"
             if confidence is not None else "in test order (this head gives no probabilities)")
    return plot_images([file for _, file in shown], captions, path,
                       f"{title}\n{len(shown)} of the {int(np.sum(y_true != y_pred))} wrong of {len(y_true)}: each "
                       f"true class in turn, {order}")


def plot_images(files: list[Path], captions: list[str], path: Path, title: str) -> Path:
    """The images in a grid, GALLERY_COLUMNS wide, each under its caption; one that cannot be read any more gets an
    empty tile that says so."""
    from matplotlib.figure import Figure  # not pyplot: a library leaves the caller's backend and figures alone

    rows = -(-len(files) // GALLERY_COLUMNS)
    fig = Figure(figsize=(2 * GALLERY_COLUMNS, 2.3 * rows + 0.6))
    axes = fig.subplots(rows, GALLERY_COLUMNS, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, file, caption in zip(axes.flat, files, captions, strict=False):  # the last row may have empty tiles
        try:
            image = load_image(file, str(file))
            image.thumbnail((256, 256))
            ax.imshow(image)
        except BadImageError:
            ax.text(0.5, 0.5, "cannot be read", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 1.1 / fig.get_figheight(), wspace=0.05,
                        hspace=0.45)
    fig.savefig(path, dpi=100)
    return path
