"""The test split image by image: every prediction in a table, and the wrong ones in a picture, so that what the head
gets wrong (a look-alike class, a mislabelled or ambiguous image) can be seen, not only how often."""

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


def plot_mistakes(source: str, ids: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                  confidence: np.ndarray | None, class_names: list[str], path: Path, title: str) -> Path | None:
    """Up to GALLERY_SIZE wrong test images in `mistake_order`, each with its true and predicted class (and that
    class's probability), as a PNG; None where the ids are not files (torchvision's datasets, digits), the dataset
    has moved, or there is no mistake."""
    files = ((i, sample_file(source, str(ids[i]))) for i in mistake_order(y_true, y_pred, confidence))
    shown = list(itertools.islice(((i, file) for i, file in files if file is not None), GALLERY_SIZE))
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(shown) // GALLERY_COLUMNS)
    fig, axes = plt.subplots(rows, GALLERY_COLUMNS, figsize=(2 * GALLERY_COLUMNS, 2.3 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (i, file) in zip(axes.flat, shown, strict=False):  # the last row may have empty tiles
        try:
            image = load_image(file, str(file))
            image.thumbnail((256, 256))
            ax.imshow(image)
        except BadImageError:
            ax.text(0.5, 0.5, "cannot be read", ha="center", va="center", transform=ax.transAxes)
        sure = "" if confidence is None else f" {confidence[i]:.2f}"
        ax.set_title(f"{class_names[y_true[i]]}\n-> {class_names[y_pred[i]]}{sure}\n{file.name}", fontsize=8)
    order = ("its most confident mistakes first (the number: the probability of the predicted class)"
             if confidence is not None else "in test order (this head gives no probabilities)")
    fig.suptitle(f"{title}\n{len(shown)} of the {int(np.sum(y_true != y_pred))} wrong of {len(y_true)}: each true "
                 f"class in turn, {order}", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 1.1 / fig.get_figheight(), wspace=0.05,
                        hspace=0.45)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
