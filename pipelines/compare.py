"""Frozen features + the best GridSearchCV head versus fine-tuning strategies, on the same data, one report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from classify.heads import fitted_parameter_count
from classify.mistakes import read_test_predictions
from classify.models import load_model
from classify.train import train_head
from extract.datasets import Dataset
from extract.errors import UsageError, make_folder
from extract.store import open_cache
from pipelines.finetune import FinetuneConfig, finetune
from pipelines.finetune.checkpoint import comparable, same_settings
from pipelines.finetune.data import run_dataset
from pipelines.finetune.probe import extract_features
from pipelines.report import (
    markdown_table,
    plot_samples,
    plot_test_accuracy,
    plot_validation_curves,
    without_predictions,
)

STRATEGIES = ("frozen", "frozen-layers", "head", "partial", "full", "lp-ft", "scratch")
DEFAULT_STRATEGIES = ("frozen", "head", "partial", "full", "lp-ft", "scratch")
FROZEN_STRATEGIES = {"frozen": "penultimate", "frozen-layers": "all"}  # which layers each extracts
FROZEN_HEADS = {"frozen": ("logreg", "svm"), "frozen-layers": ("logreg",)}  # the layer search is linear only
SAMPLE_IMAGES = 16

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


def parse_strategies(text: str | None) -> list[str]:
    chosen = [s.strip() for s in (text or ",".join(DEFAULT_STRATEGIES)).split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STRATEGIES]
    if unknown or not chosen:
        raise UsageError(f"unknown strategy {', '.join(unknown) or '(none)'}; choose from {', '.join(STRATEGIES)}")
    return chosen


def run_frozen(config: FinetuneConfig, cache_dir: str, log: Callable[[str], None], strategy: str = "frozen",
               progress: bool = False, cv: int = 3, n_jobs: int = 1) -> dict:
    """Extract through the cache (reused when present), then the head with the best cross-validated score.

    `frozen` reads the penultimate layer; `frozen-layers` every stage too, the layer chosen by cross-validation."""
    started = time.perf_counter()
    extracted = extract_features(config, log, FROZEN_STRATEGIES[strategy], config.flip, cache_dir, progress)
    cache = open_cache(extracted.path)
    smallest = int(np.bincount(cache.load("train")[1]).min())
    layer = "best" if strategy == "frozen-layers" else None
    results = [train_head(extracted.path, head, cv=min(cv, smallest), n_jobs=n_jobs, layer=layer, log=log,
                          balanced=config.balanced, seed=config.seed, progress=progress)
               for head in FROZEN_HEADS[strategy]]
    # chosen by cross-validation (balanced accuracy with --balanced), never by the test split
    best = max(results, key=lambda r: r.cv_accuracy)
    model, _ = load_model(best.model_file)
    return {"strategy": strategy, "test_accuracy": best.test_accuracy,
            "test_accuracy_interval": best.test_accuracy_interval,
            "test_balanced_accuracy": best.test_balanced_accuracy, "macro_f1": best.macro_f1,
            "test_log_loss": best.test_log_loss, "seconds": time.perf_counter() - started,
            "trainable_params": fitted_parameter_count(model),
            "images_per_second": float(cache.info.images_per_second),
            "detail": f"{best.head} on {best.layer} {best.best_params}, cv {best.scoring.replace('_', ' ')} "
                      f"{best.cv_accuracy:.4f}",
            "test_predictions": read_test_predictions(best.predictions_csv, best.class_names).tolist(),
            "cache_file": str(extracted.path)}


def compare(config: FinetuneConfig, strategies: list[str], cache_dir: str, out: str,
            log: Callable[[str], None] = _logger.info, resume: bool = False,
            dataset: Dataset | None = None, progress: bool = False, cv: int = 3, n_jobs: int = 1) -> list[dict]:
    """Each strategy on the same split, then the report. Each finished strategy leaves `OUT/STRATEGY/row.json`; with
    `resume`, those are read back and an interrupted fine-tuning continues from its last checkpoint, so a comparison
    too long for one sitting is finished by running the same command again with --resume. `dataset`: the config's,
    already resolved (`run_dataset`). `progress`: bars over each long step on stderr, as the CLI shows. `cv` and
    `n_jobs`: the frozen strategies' head searches (folds at most the smallest class's train images)."""
    dataset = run_dataset(config, dataset, log)
    out_dir = make_folder(out, "--out")
    rows, histories = [], {}
    for strategy in strategies:
        log(f"--- {strategy} ---")
        saved = out_dir / strategy / "row.json"
        if resume and saved.exists():
            row = _read_back(saved, config)
            log(f"read back from {saved} (finished earlier: test accuracy {row['test_accuracy']:.4f})")
        elif strategy in FROZEN_STRATEGIES:
            row = run_frozen(config, cache_dir, log, strategy, progress, cv, n_jobs)
        else:
            result = finetune(replace(config, mode=strategy, out=str(out_dir / strategy), cache_dir=cache_dir,
                                      unfreeze_from=config.unfreeze_from if strategy == "partial" else None),
                              log=log, dataset=dataset, resume=resume, progress=progress)
            row = {"strategy": strategy, "test_accuracy": result.test_accuracy,
                   "test_accuracy_interval": result.test_accuracy_interval,
                   "test_balanced_accuracy": result.test_balanced_accuracy, "macro_f1": result.macro_f1,
                   "test_log_loss": result.test_log_loss, "seconds": result.seconds,
                   "trainable_params": result.trainable_params,
                   "images_per_second": result.train_images_per_second,
                   "detail": f"best epoch {result.best_epoch} of {result.epochs_run}",
                   "test_predictions": result.test_predictions, "history": result.history}
        make_folder(saved.parent, "--out")
        saved.write_text(json.dumps({**row, "settings": comparable(config)}))
        if "history" in row:
            histories[strategy] = row.pop("history")
        rows.append(row)
    write_report(rows, histories, dataset, config, out_dir)
    return rows


def _read_back(path: Path, config: FinetuneConfig) -> dict:
    row = json.loads(path.read_text())
    if not same_settings(row.pop("settings"), config):
        raise UsageError(f"{path} was written by a comparison with other settings; use another --out or drop "
                         "--resume to start over")
    return row


def write_report(rows: list[dict], histories: dict, dataset: Dataset, config: FinetuneConfig, out: Path) -> Path:
    figures = []
    if histories:
        figures.append(("Validation accuracy per epoch", plot_validation_curves(histories, out / "val_curves.png")))
    figures.append(("Test accuracy", plot_test_accuracy(rows, out / "test_accuracy.png")))
    best = max(rows, key=lambda r: r["test_accuracy"])
    test = dataset.splits["test"]
    picks = np.linspace(0, len(test) - 1, min(SAMPLE_IMAGES, len(test))).astype(int)
    names = dataset.class_names
    figures.append((f"Sample test images, {best['strategy']} (predicted, true in brackets)", plot_samples(
        [test.image(i) for i in picks], [names[best["test_predictions"][i]] for i in picks],
        [names[test.labels[i]] for i in picks], out / "samples.png", f"{best['strategy']}: predicted (true)")))

    table = markdown_table(rows)
    details = "\n".join(f"- **{r['strategy']}**: {r['detail']}" for r in rows)
    setup = (f"{config.backbone} on {dataset.name}: {len(dataset.splits['train'])} train / {len(test)} test images"
             f"{f', {config.limit_per_class} per class' if config.limit_per_class else ''}"
             f"{f' (the first {config.train_per_class} train images of each class)' * bool(config.train_per_class)}, "
             f"input {config.image_size or 'default'} px, up to {config.epochs} epochs (patience {config.patience}), "
             f"{config.optimizer} lr {config.base_lr} (new layer x{config.head_lr_mult} in partial, full, scratch), "
             f"{config.schedule} schedule"
             + ("; --balanced: classes weighted by the inverse of their train count in every loss, heads and "
                "checkpoints chosen by balanced accuracy" if config.balanced else "")
             + ("; --flip: every image scored with its mirror image (frozen features averaged, fine-tuned logits "
                "averaged)." if config.flip else "."))
    body = [f"# Frozen features vs fine-tuning: {config.backbone} on {dataset.name}", "", setup, "", table, "",
            "Frozen: features extracted once (through the feature cache) and the head chosen among "
            f"{', '.join(FROZEN_HEADS['frozen'])} by cross-validation on the train split (frozen-layers: logistic "
            "regression, the layer chosen by cross-validation among every stage and the penultimate layer); its "
            "images/s is extraction "
            "throughput. Fine-tuned strategies: images/s is training throughput; 10% of the train split is held "
            "out for early stopping; test accuracy is of the best validation checkpoint, measured once.", "",
            details, ""]
    for title, path in figures:
        body += [f"## {title}", "", f"![{title}]({path.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(body))
    (out / "results.json").write_text(json.dumps(
        [without_predictions(row) for row in rows], indent=2))
    return report
