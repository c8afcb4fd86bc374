"""`finetune`: one run from dataset and backbone to a tested, calibrated network: train, validate each epoch, keep
the best checkpoint, early-stop, fit the softmax temperature, test once.

Backbones, weights, datasets and test-time preprocessing come from `extract` (one code path); this package adds only
what training needs. Under torchrun the model trains with DistributedDataParallel: --batch-size is split across the
processes, each evaluates a contiguous share of the validation and test images, and rank 0 alone writes checkpoints
and logs.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from classify.calibration import fit_temperature, softmax, softmax_log_loss
from classify.evaluate import balanced_accuracy, evaluate, format_by_confidence
from classify.mistakes import save_test_predictions
from extract.datasets import Dataset, copies_warning
from extract.distributed import World, world
from extract.errors import UsageError, make_folder
from extract.preprocess import Preprocess, resize_and_crop
from extract.runtime import resolve_device, resolve_precision
from pipelines.finetune.checkpoint import (
    comparable,
    random_states,
    restore_random_states,
    same_settings,
    save_atomically,
)
from pipelines.finetune.config import FinetuneConfig, FinetuneResult
from pipelines.finetune.data import (
    LabelledImages,
    balanced_class_weights,
    make_loader,
    run_dataset,
    train_transform,
    validation_split,
)
from pipelines.finetune.probe import fit_probe_head, load_into
from pipelines.finetune.schedule import advance, build_optimizer, build_schedule
from pipelines.finetune.surgery import parameter_groups, prepare_model
from pipelines.finetune.trainer import Trainer

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


@dataclass
class _Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader
    train_rows: np.ndarray  # rows of the train split trained on
    val_rows: np.ndarray  # rows of the train split held out for validation


@dataclass
class _Progress:
    """What a checkpoint carries on from one epoch to the next (and across --resume)."""

    history: list[dict] = field(default_factory=list)
    best_val: float = -1.0
    best_epoch: int = 0
    epoch: int = 0  # the last epoch finished
    train_seconds: float = 0.0
    train_images: int = 0


def _loaders(dataset: Dataset, preprocess: Preprocess, config: FinetuneConfig, device: torch.device,
             ranks: World) -> _Loaders:
    train_split, test_split = dataset.splits["train"], dataset.splits["test"]
    train_rows, val_rows = validation_split(train_split.labels, config.val_fraction, config.seed)
    evaluate_transform = functools.partial(resize_and_crop, preprocess=preprocess)

    def share(rows: np.ndarray) -> np.ndarray:
        return np.array_split(rows, ranks.size)[ranks.rank]

    return _Loaders(
        make_loader(LabelledImages(train_split, train_rows, train_transform(preprocess)), config, True, device, ranks),
        make_loader(LabelledImages(train_split, share(val_rows), evaluate_transform), config, False, device, ranks),
        make_loader(LabelledImages(test_split, share(np.arange(len(test_split))), evaluate_transform), config, False,
                    device, ranks),
        train_rows, val_rows)


def _resume(path: Path, config: FinetuneConfig, device: torch.device, model: nn.Module, optimizer, schedule,
            loader: DataLoader, log: Callable[[str], None]) -> _Progress:
    """The state of an interrupted run, loaded into model, optimiser, schedule and random generators."""
    state = torch.load(path, map_location=device, weights_only=True)
    if not same_settings(state["config"], config):
        raise UsageError(f"{path} was written by a run with other settings; use another --out or drop --resume to "
                         "start over")
    if "random_states" not in state:
        raise UsageError(f"{path} was written by an earlier version, which kept no random state to continue the same "
                         "run from; drop --resume to start over")
    model.load_state_dict(state["model"])
    advance(schedule, optimizer, state["epoch"] * len(loader), state["optimizer"])
    restore_random_states(state["random_states"], loader.generator)
    log(f"resuming {config.mode} from epoch {state['epoch']} ({path})")
    return _Progress(state["history"], state["best_val"], state["best_epoch"], state["epoch"], state["train_seconds"],
                     state["train_images"])


def finetune(config: FinetuneConfig, resume: bool = False, log: Callable[[str], None] = _logger.info,
             dataset: Dataset | None = None, progress: bool = False) -> FinetuneResult:
    """Train, early-stop on validation accuracy (balanced accuracy with `config.balanced`), evaluate the best
    checkpoint once on the test split. With `resume`, continue the run in `config.out` from its last epoch: the
    same history and weights as a run never stopped. `progress`: bars over each pass on stderr, as the CLI shows."""
    config.validate()
    ranks = world(config.device)
    if not ranks.is_main:
        log = lambda message: None  # noqa: E731
    torch.manual_seed(config.seed)
    dataset = run_dataset(config, dataset, log)
    if ranks.is_main:  # the others' log is silent: no need to read the files for it
        for line in (dataset.note, copies_warning(dataset.test_copies)):
            if line:
                log(line)
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    config = replace(config, precision=resolve_precision(config.precision, device))  # the checkpoints record it
    n_classes = len(dataset.class_names)
    model, preprocess, head = prepare_model(config, n_classes)
    model.to(device).to(memory_format=torch.channels_last)
    out = make_folder(config.out, "--out")
    loaders = _loaders(dataset, preprocess, config, device, ranks)
    train_labels = dataset.splits["train"].labels
    optimizer = build_optimizer(parameter_groups(model, head, config), config)
    schedule = build_schedule(optimizer, config, len(loaders.train))
    # lp-ft keeps the batch-norm statistics the probe's features were computed with: batch statistics would move
    # every feature at the first step, and the probe with them
    trainer = Trainer(model, preprocess, device, config.precision, ranks, balanced_class_weights(
        train_labels[loaders.train_rows], n_classes) if config.balanced else None, config.flip,
        keep_norm_statistics=config.mode == "lp-ft", progress=progress)
    last_path, best_path = out / "last.pt", out / "best.pt"
    state = _Progress()
    if resume and last_path.exists():
        state = _resume(last_path, config, device, model, optimizer, schedule, loaders.train, log)
    elif resume:
        log(f"nothing to resume in {out}; starting from epoch 1")

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"fine-tuning {config.backbone} ({config.mode}: {trainable:,} of {total:,} parameters trainable) on "
        f"{dataset.name}: {len(loaders.train_rows)} train / {len(loaders.val_rows)} val / "
        f"{len(dataset.splits['test'])} test images, {preprocess.crop_size} px, {device.type}"
        + (f", {ranks.size} processes" if ranks.distributed else "")
        + (", classes weighted alike, checkpoints by validation balanced accuracy" if config.balanced else "")
        + (", validation and test images scored with their mirror images" if config.flip else ""))
    stale = sum(1 for row in state.history if row["epoch"] > state.best_epoch)

    def record(row: dict) -> None:
        """An epoch's row: the log, the best checkpoint, the last one (with the random states), the history files."""
        nonlocal stale
        state.history.append(row)
        log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, train acc {row['train_accuracy']:.4f}, val acc "
            f"{row['val_accuracy']:.4f}" + (f", val balanced acc {row['val_balanced_accuracy']:.4f}"
                                           if config.balanced else "") + f" ({row['seconds']:.1f} s)")
        val_score = row[config.validation_score]
        improved = val_score > state.best_val
        if improved:
            state.best_val, state.best_epoch, stale = val_score, row["epoch"], 0
        else:
            stale += 1
        state.epoch = row["epoch"]
        if ranks.is_main:
            if improved:
                save_atomically({"model": model.state_dict(), "epoch": row["epoch"],
                                 config.validation_score: val_score}, best_path)
            save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "history": state.history, "best_val": state.best_val,
                             "best_epoch": state.best_epoch, "epoch": row["epoch"], "config": comparable(config),
                             "train_seconds": state.train_seconds, "train_images": state.train_images,
                             "random_states": random_states(loaders.train.generator)}, last_path)
            write_history(state.history, out)

    def validation_row(epoch: int, train_loss: float, train_acc: float, started: float,
                       grad_norm: float | None) -> dict:
        val_true, val_pred = train_labels[loaders.val_rows], trainer.predict(loaders.val)
        return {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                "val_accuracy": float(np.mean(val_pred == val_true)),
                "val_balanced_accuracy": balanced_accuracy(val_true, val_pred),
                "seconds": time.perf_counter() - started, "lr_head": optimizer.param_groups[0]["lr"],
                "grad_norm": grad_norm}

    if config.mode == "lp-ft" and not state.history:
        started = time.perf_counter()
        probe = fit_probe_head(config, dataset, loaders.train_rows, log, progress)
        load_into(model.get_submodule(head), probe)
        log("epoch 0 is the network before any update, the probe its output layer")
        record(validation_row(0, probe.train_loss, probe.train_accuracy, started, None))
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if stale >= config.patience:
            log(f"early stop: validation {'balanced ' * config.balanced}accuracy has not improved for "
                f"{config.patience} epochs")
            break
        epoch_start = time.perf_counter()
        with tqdm(total=len(loaders.train_rows), unit="img", desc=f"{config.mode} epoch {epoch}/{config.epochs}",
                  file=sys.stderr, leave=False, dynamic_ncols=True, disable=not (progress and ranks.is_main)) as bar:
            train_loss, train_acc, seen, grad_norm = trainer.train_epoch(loaders.train, optimizer, schedule, bar,
                                                                         epoch)
        state.train_seconds += time.perf_counter() - epoch_start
        state.train_images += seen
        record(validation_row(epoch, train_loss, train_acc, epoch_start, grad_norm))

    ranks.barrier()  # best.pt is written
    model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True)["model"])
    result, probabilities = _test(trainer, loaders, dataset, config, state, trainable, total, out, log)
    if ranks.is_main:
        # with what `python -m pipelines predict` needs to rebuild the model and feed it as the test split was
        (out / "result.json").write_text(json.dumps({**result.to_dict(), "config": asdict(config),
                                                     "class_names": dataset.class_names,
                                                     "preprocess": preprocess.to_dict()}, indent=2))
        test_split = dataset.splits["test"]
        save_test_predictions(out / "predictions.csv", out / "mistakes.png", dataset.source,
                              np.asarray(test_split.ids), test_split.labels, np.asarray(result.test_predictions),
                              probabilities, dataset.class_names,
                              f"{config.backbone} fine-tuned ({config.mode}): wrong test images, true -> predicted")
    log(f"{config.mode}: test accuracy {result.test_accuracy:.4f}, balanced accuracy "
        f"{result.test_balanced_accuracy:.4f} (best epoch {state.best_epoch}, val {state.best_val:.4f}), "
        f"log loss {result.test_log_loss:.4f}, calibration error {result.test_calibration_error:.4f}\n"
        f"{format_by_confidence(result.test_by_confidence)}")
    return result


def _test(trainer: Trainer, loaders: _Loaders, dataset: Dataset, config: FinetuneConfig, state: _Progress,
          trainable: int, total: int, out: Path, log: Callable[[str], None]) -> tuple[FinetuneResult, np.ndarray]:
    """The loaded checkpoint's softmax temperature, fitted on the validation split, then its one test: the result
    and the test probabilities."""
    test_start = time.perf_counter()
    n_classes = len(dataset.class_names)
    val_logits = trainer.logits(loaders.val, n_classes, "validation")
    val_labels = dataset.splits["train"].labels[loaders.val_rows]
    temperature = fit_temperature(val_logits, val_labels)
    log(f"softmax temperature {temperature:.3f}, fitted on the validation split: its log loss "
        f"{softmax_log_loss(val_logits, val_labels, 1.0):.4f} -> "
        f"{softmax_log_loss(val_logits, val_labels, temperature):.4f}")
    probabilities = softmax(trainer.logits(loaders.test, n_classes), temperature)
    predictions = probabilities.argmax(1)
    seconds = sum(row["seconds"] for row in state.history) + time.perf_counter() - test_start
    evaluation = evaluate(dataset.splits["test"].labels, predictions, dataset.class_names, probabilities)
    return FinetuneResult(
        strategy=config.mode, test_accuracy=evaluation.accuracy, test_accuracy_interval=evaluation.accuracy_interval,
        test_balanced_accuracy=evaluation.balanced_accuracy, macro_f1=evaluation.macro_f1,
        test_log_loss=evaluation.log_loss, test_calibration_error=evaluation.calibration_error,
        test_by_confidence=evaluation.by_confidence, temperature=temperature,
        best_epoch=state.best_epoch, epochs_run=sum(1 for row in state.history if row["epoch"] > 0),
        trainable_params=trainable, total_params=total, seconds=seconds,
        train_images_per_second=state.train_images / max(state.train_seconds, 1e-9), history=state.history,
        test_predictions=predictions.tolist(), out=str(out)), probabilities


def write_history(history: list[dict], out: Path) -> None:
    """The per-epoch log as CSV and JSON, and its plot."""
    with open(out / "history.csv", "w", newline="") as handle:
        # every row's keys: a run resumed from an earlier version has rows with fewer
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(key for row in history for key in row)))
        writer.writeheader()
        writer.writerows(history)
    (out / "history.json").write_text(json.dumps(history, indent=2))
    from pipelines.report import plot_history

    plot_history(history, out / "history.png")
