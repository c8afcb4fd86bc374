"""Plots and the comparison report page (Markdown beside its PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(**options):
    """A Figure of its own, not pyplot's: a library leaves the caller's backend and open figures alone."""
    from matplotlib.figure import Figure

    return Figure(**options)


def _whole_epochs(*axes) -> None:
    """Ticks at whole epochs only: a 2-epoch run otherwise gets ticks at 1.2, 1.4, ..."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_history(history: list[dict], path: Path) -> Path:
    """Train loss, train accuracy and validation accuracy per epoch of one fine-tuning run."""
    epochs = [row["epoch"] for row in history]
    fig = _figure(figsize=(10, 3.8))
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="training loss")
    acc_ax.plot(epochs, [row["train_accuracy"] for row in history], marker="o", label="train")
    acc_ax.plot(epochs, [row["val_accuracy"] for row in history], marker="o", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    acc_ax.legend()
    _whole_epochs(loss_ax, acc_ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_validation_curves(histories: dict[str, list[dict]], path: Path) -> Path:
    fig = _figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for name, history in histories.items():
        ax.plot([r["epoch"] for r in history], [r["val_accuracy"] for r in history], marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy per epoch", ylim=(0, 1))
    ax.legend()
    ax.grid(alpha=0.3)
    _whole_epochs(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_test_accuracy(rows: list[dict], path: Path) -> Path:
    fig = _figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    names = [row["strategy"] for row in rows]
    values = [row["test_accuracy"] for row in rows]
    errors = np.array([[value - row["test_accuracy_interval"][0], row["test_accuracy_interval"][1] - value]
                       for value, row in zip(values, rows, strict=True)]).T
    bars = ax.bar(names, values, yerr=errors, capsize=4, ecolor="#333333",
                  color=["#4c72b0" if n.startswith("frozen") else "#dd8452" for n in names])
    for bar, value, high in zip(bars, values, errors[1], strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, value + high + 0.015, f"{value:.3f}", ha="center", va="bottom")
    ax.set(ylabel="test accuracy", ylim=(0, 1.1), title="test accuracy by strategy (whiskers: 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_learning_curve(points: dict[int, list[dict]], path: Path) -> Path:
    """Test accuracy against train images per class (log scale), a line and its 95% interval band per strategy."""
    fig = _figure(figsize=(6.5, 4))
    ax = fig.subplots()
    sizes = list(points)
    for index, name in enumerate(row["strategy"] for row in points[sizes[0]]):
        rows = [next(row for row in points[size] if row["strategy"] == name) for size in sizes]
        ax.plot(sizes, [row["test_accuracy"] for row in rows], marker="o", label=name,
                linestyle="--" if name.startswith("frozen") else "-", color=f"C{index}")
        ax.fill_between(sizes, [row["test_accuracy_interval"][0] for row in rows],
                        [row["test_accuracy_interval"][1] for row in rows], alpha=0.15, color=f"C{index}")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.minorticks_off()
    ax.set(xlabel="train images per class", ylabel="test accuracy", title="test accuracy by train size (bands: 95%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_samples(images: list, predicted: list[str], true: list[str], path: Path, title: str) -> Path:
    """A grid of test images titled 'predicted (true)', green when right and red when wrong."""
    columns = min(8, len(images))
    rows = int(np.ceil(len(images) / columns))
    # constrained: room for each two-line title (tight_layout let them overlap)
    fig = _figure(figsize=(1.7 * columns, 2.0 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, guess, truth in zip(axes.flat, images, predicted, true, strict=False):
        ax.imshow(image)
        ax.set_title(f"{guess}\n({truth})", fontsize=8, color="green" if guess == truth else "red")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


def without_predictions(row: dict) -> dict:
    """A strategy's row as results.json and --json give it: everything but its 10,000s of test predictions."""
    return {key: value for key, value in row.items() if key != "test_predictions"}


def markdown_table(rows: list[dict]) -> str:
    """One row per strategy; the log loss where it gives probabilities (a frozen SVM head does not)."""
    lines = ["| strategy | test accuracy | 95% interval | balanced accuracy | macro-F1 | log loss | wall time (s) | "
             "trainable params | images/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        low, high = row["test_accuracy_interval"]
        log_loss = "-" if row["test_log_loss"] is None else f"{row['test_log_loss']:.4f}"
        lines.append(f"| {row['strategy']} | {row['test_accuracy']:.4f} | {low:.3f}-{high:.3f} | "
                     f"{row['test_balanced_accuracy']:.4f} | {row['macro_f1']:.4f} | {log_loss} | "
                     f"{row['seconds']:.1f} | {row['trainable_params']:,} | {row['images_per_second']:.1f} |")
    return "\n".join(lines)
