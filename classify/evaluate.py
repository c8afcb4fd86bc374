"""Test metrics computed once on the held-out split: accuracy, macro-F1, per-class report, confusion matrix, and
for heads that give probabilities, how good those are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
    recall_score,
)


@dataclass
class Evaluation:
    accuracy: float
    accuracy_interval: tuple[float, float]
    balanced_accuracy: float  # the mean of the classes' recalls: what accuracy would be with every class as large
    macro_f1: float
    report: str
    confusion: np.ndarray
    log_loss: float | None = None  # of the probabilities, where the head gives them
    calibration_error: float | None = None
    by_confidence: list[dict] | None = None  # accuracy_by_confidence's table


def accuracy_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy measured on `total` test images: how far the true accuracy may
    be from the measured one for want of more test images (on 100 images, 0.66 means 0.56 to 0.75)."""
    if total == 0:
        return 0.0, 1.0
    rate = correct / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * np.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def calibration_error(probabilities: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over `bins` bins of the predicted class's probability, how far that probability is
    from how often the prediction is right, weighted by the bin's share of images (0: as often right as it says)."""
    confidence = probabilities[np.arange(len(y_pred)), y_pred]
    right = y_true == y_pred
    binned = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(right[binned == b].mean() - confidence[binned == b].mean()) * np.mean(binned == b)
                     for b in np.unique(binned)))


CONFIDENCE_THRESHOLDS = (0.5, 0.7, 0.9, 0.95, 0.99)


def accuracy_by_confidence(probabilities: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                           thresholds: tuple[float, ...] = CONFIDENCE_THRESHOLDS) -> list[dict]:
    """Per threshold, the share of images whose predicted class has at least that probability and the accuracy on
    them: what acting on the confident predictions alone, and sending the rest to a person, would give."""
    confidence = probabilities[np.arange(len(y_pred)), y_pred]
    right = y_true == y_pred
    table = []
    for threshold in thresholds:
        kept = confidence >= threshold
        table.append({"min_probability": threshold, "share": float(kept.mean()),
                      "accuracy": float(right[kept].mean()) if kept.any() else None})
    return table


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The mean of the classes' recalls: scikit-learn's balanced_accuracy_score, without its warning when a class is
    predicted that has no true image."""
    return float(recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro"))


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str],
             probabilities: np.ndarray | None = None) -> Evaluation:
    """`probabilities`, where given: (n, n_classes), a column per class of `class_names`."""
    labels = np.arange(len(class_names))
    if probabilities is not None:
        probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # float32 sums miss 1 by 1e-7
    return Evaluation(
        accuracy=float(accuracy_score(y_true, y_pred)),
        accuracy_interval=accuracy_interval(int(np.sum(y_true == y_pred)), len(y_true)),
        balanced_accuracy=balanced_accuracy(y_true, y_pred),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        report=classification_report(y_true, y_pred, labels=labels, target_names=class_names, digits=3,
                                     zero_division=0),
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
        log_loss=None if probabilities is None else float(log_loss(y_true, probabilities, labels=labels)),
        calibration_error=None if probabilities is None else calibration_error(probabilities, y_true, y_pred),
        by_confidence=None if probabilities is None else accuracy_by_confidence(probabilities, y_true, y_pred),
    )


def format_by_confidence(table: list[dict]) -> str:
    """accuracy_by_confidence's table as three aligned rows, for choosing `predict --min-probability`."""
    def cells(texts) -> str:
        return "".join(f"{text:>9}" for text in texts)

    return "\n".join([
        "predicted class's probability " + cells(f">= {row['min_probability']:g}" for row in table),
        "share of the test images      " + cells(f"{row['share']:.1%}" for row in table),
        "right among them              " + cells("-" if row["accuracy"] is None else f"{row['accuracy']:.1%}"
                                                 for row in table)])


MATRIX_MAX_CLASSES = 20


def format_confusion(confusion: np.ndarray, class_names: list[str], pairs: int = 10) -> str:
    """The matrix itself up to MATRIX_MAX_CLASSES classes; beyond, its rows no longer fit a terminal (CIFAR-100's
    would be 700 characters wide), so the `pairs` most confused (true, predicted) pairs instead."""
    if len(class_names) <= MATRIX_MAX_CLASSES:
        width = max(5, max(len(n) for n in class_names) + 1)
        header = " " * width + "".join(f"{n[:6]:>7}" for n in class_names)
        rows = [f"{n:<{width}}" + "".join(f"{v:>7}" for v in row)
                for n, row in zip(class_names, confusion, strict=True)]
        return "\n".join(["rows: true class, columns: predicted", header, *rows])
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    order = np.argsort(-errors, axis=None, kind="stable")[:pairs]
    lines = [f"most confused of {len(class_names)} classes (true -> predicted: test images, share of the true class)"]
    for true, predicted in zip(*np.unravel_index(order, errors.shape), strict=True):
        if errors[true, predicted]:
            share = errors[true, predicted] / max(confusion[true].sum(), 1)
            lines.append(f"  {class_names[true]} -> {class_names[predicted]}: {errors[true, predicted]} ({share:.0%})")
    return "\n".join(lines if len(lines) > 1 else [*lines, "  none: every test image is right"])


NAMED_TICKS_MAX_CLASSES = 120


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix as a PNG, counts written in the cells when they fit."""
    from matplotlib.figure import Figure  # not pyplot: a library leaves the caller's backend and figures alone

    n = len(class_names)
    size = min(4 + 0.45 * n, 24)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    few = n <= 30  # room for slanted names at full size, and for the counts in the cells
    if n <= NAMED_TICKS_MAX_CLASSES:
        ax.set_xticks(range(n), class_names, rotation=45 if few else 90, ha="right" if few else "center",
                      fontsize=10 if few else 7)
        ax.set_yticks(range(n), class_names, fontsize=10 if few else 7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    else:  # a thousand names would print over each other: the axes count classes in the cache's order instead
        ax.set_xlabel("predicted class (its index in the cache's class_names)")
        ax.set_ylabel("true class (index)")
    ax.set_title(title)
    if few:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
