"""The test split image by image: every prediction in a table, and the wrong ones in a picture, so that what the head
gets wrong (a look-alike class, a mislabelled or ambiguous image) can be seen, not only how often. The picture is
drawn here for the train images `suspects` ranks too."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np

from extract.datasets import BadImageError, load_image, sample_file

GALLERY_SIZE = 30
GALLERY_COLUMNS = 6


def predicted_probabilities(probabilities: np.ndarray | None, y_pred: np.ndarray) -> np.ndarray | None:
    """The probability each image's predicted class got, or None for heads that give none."""
    return None if probabilities is None else probabilities[np.arange(len(y_pred)), y_pred]


def write_predictions(path: Path, ids: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                      confidence: np.ndarray | None, class_names: list[str]) -> Path:
    """One row per test image: its id (the file, for image folders and tables), true and predicted class, and the
    probability of the predicted class (empty for heads without probabilities): the table to sort and filter."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "true", "predicted", "probability"])
        for i, (sample_id, true, predicted) in enumerate(zip(ids, y_true, y_pred, strict=True)):
            writer.writerow([sample_id, class_names[true], class_names[predicted],
                             "" if confidence is None else f"{confidence[i]:.4f}"])
    return path


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


def image_files(source: str, ids: np.ndarray, rows: np.ndarray) -> list[tuple[int, Path]]:
    """Up to GALLERY_SIZE of `rows`, in order, with the image file each one's id names; none where the ids are not
    files (torchvision's datasets, digits) or the dataset has moved."""
    files = ((row, sample_file(source, str(ids[row]))) for row in rows)
    return list(itertools.islice(((row, file) for row, file in files if file is not None), GALLERY_SIZE))


def plot_mistakes(source: str, ids: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                  confidence: np.ndarray | None, class_names: list[str], path: Path, title: str) -> Path | None:
    """Up to GALLERY_SIZE wrong test images in `mistake_order`, each with its true and predicted class (and that
    class's probability), as a PNG; None where there are no image files to show or no mistake."""
    shown = image_files(source, ids, mistake_order(y_true, y_pred, confidence))
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(files) // GALLERY_COLUMNS)
    fig, axes = plt.subplots(rows, GALLERY_COLUMNS, figsize=(2 * GALLERY_COLUMNS, 2.3 * rows + 0.6), squeeze=False)
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
    plt.close(fig)
    return path
