"""The learning curve: one comparison per number of train images per class, all scored on the same whole test
split, drawn as test accuracy against train size with one line per strategy. Where the lines cross is where
fine-tuning starts to pay (the advisor's size threshold is checked against it: docs/advisor.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from extract.datasets import resolve_dataset
from extract.errors import UsageError, make_folder
from pipelines.compare import FROZEN_STRATEGIES, compare
from pipelines.finetune import FinetuneConfig
from pipelines.finetune.data import without_unreadable
from pipelines.report import plot_learning_curve, without_predictions

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


def parse_sizes(text: str) -> list[int]:
    """'50,200,1000' -> [50, 200, 1000]: sorted, each once."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--train-per-class takes whole numbers of 1 or more separated by commas (e.g. 50,200,1000), "
                         f"not {text!r}")
    return sizes


def learning_curve(config: FinetuneConfig, strategies: list[str], sizes: list[int], cache_dir: str, out: str,
                   log: Callable[[str], None] = _logger.info, resume: bool = False,
                   progress: bool = False, cv: int = 3, n_jobs: int = 1) -> dict[int, list[dict]]:
    """`compare` at each size in `OUT/train-N/`, then `OUT/report.md` with the curve. A size at or above the largest
    class is the whole train split (the same run as a comparison without a limit, so `--resume` reads it back)."""
    full = resolve_dataset(config.dataset, config.data_root, config.limit_per_class)
    full = without_unreadable(full, log) if config.skip_bad else full
    largest = int(np.bincount(full.splits["train"].labels).max())
    out_dir = make_folder(out, "--out")
    points: dict[int, list[dict]] = {}
    for size in sorted({min(size, largest) for size in sizes}):
        log(f"=== {size} train images per class ===")
        points[size] = compare(replace(config, train_per_class=size if size < largest else None), strategies,
                               cache_dir, str(out_dir / f"train-{size}"), log=log, resume=resume, dataset=full,
                               progress=progress, cv=cv, n_jobs=n_jobs)
    write_curve_report(points, config, full.name, out_dir)
    return points


def crossings(points: dict[int, list[dict]]) -> list[str]:
    """For each fine-tuned strategy, the sizes where its test accuracy is above the best frozen strategy's."""
    lines = []
    names = [row["strategy"] for row in next(iter(points.values()))]
    frozen = [name for name in names if name in FROZEN_STRATEGIES]
    for name in (n for n in names if n not in FROZEN_STRATEGIES and frozen):
        above = []
        for size, rows in points.items():
            accuracy = {row["strategy"]: row["test_accuracy"] for row in rows}
            margin = accuracy[name] - max(accuracy[f] for f in frozen)
            if margin > 0:
                above.append(f"{size} ({margin * 100:+.1f} points)")
        lines.append(f"- **{name}** beats the best frozen strategy at "
                     f"{', '.join(above) if above else 'none of these sizes'}.")
    return lines


def summary(points: dict[int, list[dict]]) -> list[str]:
    """The curve as a table, a row per size linking to its report, then where fine-tuning beats frozen features."""
    names = [row["strategy"] for row in next(iter(points.values()))]
    header = ["| train images per class | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    table = [f"| [{size}](train-{size}/report.md) | " + " | ".join(
        f"{row['test_accuracy']:.4f} ({row['test_accuracy_interval'][0]:.3f}-{row['test_accuracy_interval'][1]:.3f})"
        for row in rows) + " |" for size, rows in points.items()]
    return [*header, *table, "", *crossings(points)]


def results(points: dict[int, list[dict]]) -> dict[str, list[dict]]:
    """What results.json and --json hold: each size's rows."""
    return {str(size): [without_predictions(row) for row in rows] for size, rows in points.items()}


def write_curve_report(points: dict[int, list[dict]], config: FinetuneConfig, dataset_name: str, out: Path) -> Path:
    figure = plot_learning_curve(points, out / "learning_curve.png")
    body = [f"# Learning curve: {config.backbone} on {dataset_name}", "",
            f"Test accuracy (95% interval) by the number of train images per class (the first N of each class), "
            f"every point scored on the same whole test split; input {config.image_size or 'default'} px, up to "
            f"{config.epochs} epochs, {config.optimizer} lr {config.base_lr}"
            + (", --flip" if config.flip else "") + ". Each size links to its comparison report.", "",
            *summary(points), "", f"![Learning curve]({figure.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(body))
    (out / "results.json").write_text(json.dumps(results(points), indent=2))
    return report
