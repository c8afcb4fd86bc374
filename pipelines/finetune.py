"""Fine-tuning: freezing modes, parameter groups, the training loop, checkpoints, the per-epoch log.

Backbones, weights, datasets and test-time preprocessing come from `extract` (one code path); this module
adds only what training needs: augmentation, a validation split, optimisers and schedules, checkpoints.
Under torchrun the model trains with DistributedDataParallel: --batch-size is split across the processes, each
evaluates a contiguous share of the validation and test images, and rank 0 alone writes checkpoints and logs.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset
from tqdm import tqdm

from classify.evaluate import balanced_accuracy, evaluate, format_by_confidence
from classify.mistakes import save_test_predictions
from extract.backbones import DEFAULT_BACKBONE, Preprocess, block_names, create_backbone, replace_classifier
from extract.datasets import BadImageError, Dataset, Split, copies_warning, resolve_dataset
from extract.distributed import World, world
from extract.errors import UsageError, make_folder
from extract.features import check_workers, default_workers, keep_freed_memory, resolve_device
from extract.pixels import normalize, resize_and_crop

MODES = ("head", "partial", "full", "scratch")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")
DEFAULT_LR = {"sgd": 0.003, "adamw": 1e-4}


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Everything here is recorded in the checkpoint and the result file."""

    backbone: str = DEFAULT_BACKBONE
    dataset: str = ""
    mode: str = "full"
    unfreeze_from: str | None = None
    weights: str | None = None
    image_size: int | None = None
    limit_per_class: int | None = None
    data_root: str = "data"
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    head_lr_mult: float = 10.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    patience: int = 3
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    balanced: bool = False  # classes weighted by the inverse of their train count; checkpoints by balanced accuracy
    flip: bool = False  # validation and test logits averaged with the mirror image's (frozen: extract --flip)
    workers: int | None = None
    out: str = "runs/finetune"

    def validate(self) -> None:
        checks = [
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.epochs >= 1, f"--epochs must be 1 or more, not {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be 1 or more, not {self.batch_size}"),
            (0 < self.val_fraction < 1, f"--val-fraction must be between 0 and 1, not {self.val_fraction}"),
            (self.lr is None or self.lr > 0, f"--lr must be positive, not {self.lr}"),
            (self.head_lr_mult > 0, f"--head-lr-mult must be positive, not {self.head_lr_mult}"),
            (self.weight_decay >= 0, f"--weight-decay must be 0 or more, not {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be 0 or more, not {self.warmup_epochs}"),
            (self.patience >= 1, f"--patience must be 1 or more (epochs without a better validation score before "
                                 f"stopping), not {self.patience}"),
            (self.precision in ("fp32", "bf16", "fp16"), "--precision must be fp32, bf16 or fp16"),
            (self.unfreeze_from is None or self.mode == "partial", "--unfreeze-from goes with --mode partial"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        check_workers(self.workers)

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def validation_score(self) -> str:
        """What picks the best checkpoint and stops early: a key of the history's rows."""
        return "val_balanced_accuracy" if self.balanced else "val_accuracy"


@dataclass
class FinetuneResult:
    strategy: str
    test_accuracy: float
    test_accuracy_interval: tuple[float, float]  # 95% Wilson interval (classify/evaluate.py)
    test_balanced_accuracy: float  # the mean of the classes' recalls
    macro_f1: float
    test_log_loss: float  # of the softmax probabilities at `temperature` (classify/evaluate.py)
    test_calibration_error: float
    test_by_confidence: list[dict]  # share of test images and accuracy at each minimum probability
    temperature: float  # the logits are divided by it before the softmax (fit_temperature)
    best_epoch: int
    epochs_run: int
    trainable_params: int
    total_params: int
    seconds: float
    train_images_per_second: float
    history: list[dict] = field(repr=False)
    test_predictions: list[int] = field(repr=False)
    out: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ---- model preparation ------------------------------------------------------------------------------------


def prepare_model(config: FinetuneConfig, num_classes: int) -> tuple[nn.Module, Preprocess, str]:
    """The backbone with a new output layer and only the parameters of the mode trainable; the head's name."""
    weights = "none" if config.mode == "scratch" else config.weights
    backbone = create_backbone(config.backbone, weights, config.image_size)
    model = backbone.model
    head = replace_classifier(model, num_classes)
    model.requires_grad_(False)
    if config.mode in ("full", "scratch"):
        model.requires_grad_(True)
    elif config.mode == "partial":
        blocks = block_names(model)
        start = config.unfreeze_from or default_unfreeze_from(blocks)
        if start not in blocks:
            raise UsageError(f"--unfreeze-from {start!r} is not a block of {config.backbone}; "
                             f"choose one of {', '.join(blocks)}")
        for name in blocks[blocks.index(start):]:
            model.get_submodule(name).requires_grad_(True)
    model.get_submodule(head).requires_grad_(True)
    return model, backbone.preprocess, head


def default_unfreeze_from(blocks: list[str]) -> str:
    """Train the last third of the blocks (by count) and the head."""
    return blocks[max(0, len(blocks) - 1 - math.ceil((len(blocks) - 1) / 3))]


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except batch-norm layers that are frozen: their running statistics stay untouched."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()):
            module.eval()


def parameter_groups(model: nn.Module, head: str, config: FinetuneConfig) -> list[dict]:
    """The new head at lr x head_lr_mult; the pretrained part at lr (scratch: everything at the head's rate)."""
    head_params = list(model.get_submodule(head).parameters())
    head_ids = {id(p) for p in head_params}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head_lr = config.base_lr * config.head_lr_mult
    body_lr = head_lr if config.mode == "scratch" else config.base_lr
    groups = [{"params": head_params, "lr": head_lr, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": body_lr, "name": "backbone"})
    return groups


def build_optimizer(groups: list[dict], config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)


def build_schedule(optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero or steps of x0.1 at 50% and 75% of the run; stepped per batch."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 0.1 ** sum(progress >= m for m in (0.5, 0.75))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Each class's loss weight: the inverse of its train count, scaled as scikit-learn's class_weight='balanced'
    (a class without train images keeps weight 1; it never appears in the loss)."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = np.ones(n_classes)
    present = np.unique(labels)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


MAX_TEMPERATURE = 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [1, MAX_TEMPERATURE] for which softmax(logits / T) has the least log loss on these (validation)
    images: temperature scaling (Guo et al. 2017). A network fine-tuned with cross-entropy is overconfident, and one
    scalar fixes most of it without changing any prediction. T only softens: a small validation split that the
    network gets all right would otherwise sharpen it further."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda log_t: softmax_log_loss(logits, labels, math.exp(log_t)),
                            bounds=(0.0, math.log(MAX_TEMPERATURE)), method="bounded")
    return math.exp(found.x)


def softmax_log_loss(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    rows = log_softmax(logits.astype(np.float64) / temperature, axis=1)
    return -float(np.mean(rows[np.arange(len(labels)), labels]))


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(logits / temperature, axis=1).astype(np.float32)


# ---- data -------------------------------------------------------------------------------------------------


def train_transform(preprocess: Preprocess) -> T.Compose:
    """Random resized crop and horizontal flip at the backbone's input size and interpolation (uint8 out)."""
    return T.Compose([
        T.PILToTensor(),
        T.RandomResizedCrop(preprocess.crop_size, scale=(0.25, 1.0),
                            interpolation=T.InterpolationMode(preprocess.interpolation), antialias=True),
        T.RandomHorizontalFlip(),
    ])


class _LabelledImages(TorchDataset):
    def __init__(self, split: Split, indices: np.ndarray, transform: Callable):
        self.split, self.indices, self.transform = split, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        row = int(self.indices[index])
        try:
            return self.transform(self.split.image(row)), int(self.split.labels[row])
        except BadImageError as error:
            return None, str(error)


@dataclass
class _UnreadableImages:
    """What a loader worker hands back instead of a batch with unreadable images (its exceptions would arrive as a
    multi-line traceback text)."""

    reasons: list[str]


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | _UnreadableImages:
    bad = [reason for image, reason in items if image is None]
    if bad:
        return _UnreadableImages(bad)
    return torch.utils.data.default_collate(items)


def _batches(loader: DataLoader):
    """The loader's batches; an unreadable image stops the run with its name."""
    for batch in loader:
        if isinstance(batch, _UnreadableImages):
            raise UsageError(f"cannot read {len(batch.reasons)} image(s): {'; '.join(batch.reasons[:5])}; fix or "
                             "remove them (checkpoints written so far are kept)")
        yield batch


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices carved from the training split."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    if counts[counts > 0].min() < 2:
        raise UsageError("every class needs at least 2 training images to carve a validation split")
    n_val = max(int(round(fraction * len(labels))), int((counts > 0).sum()))
    train, val = train_test_split(indices, test_size=n_val, stratify=labels, random_state=seed)
    # a small class that the proportions leave out of validation gives one image, so that its recall counts in
    # the validation balanced accuracy (--balanced) and its mistakes in the validation accuracy
    missing = np.setdiff1d(np.flatnonzero(counts), labels[val])
    moved = np.array([train[labels[train] == label][0] for label in missing], dtype=train.dtype)
    return np.sort(np.setdiff1d(train, moved)), np.sort(np.concatenate([val, moved]))


def _loader(dataset: TorchDataset, config: FinetuneConfig, shuffle: bool, device: torch.device,
            ranks: World) -> DataLoader:
    """Training (shuffle): each rank draws its own part of every epoch's permutation, batch_size / ranks at a
    time, so one step still sees --batch-size images. Evaluation: the rank's own contiguous share, in order."""
    workers = default_workers(device) if config.workers is None else config.workers
    sampler = DistributedSampler(dataset, ranks.size, ranks.rank, shuffle=True, seed=config.seed) \
        if shuffle and ranks.distributed else None
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, batch_size=max(1, config.batch_size // ranks.size), shuffle=shuffle and not sampler,
                      sampler=sampler, num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
                      drop_last=False, generator=generator, persistent_workers=workers > 0)


# ---- checkpoints ------------------------------------------------------------------------------------------


def save_atomically(state: dict, path: Path) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _comparable(config: FinetuneConfig) -> dict:
    fields = asdict(config)
    for key in ("epochs", "device", "workers", "out", "patience"):
        fields.pop(key)
    return fields


# ---- the run ----------------------------------------------------------------------------------------------


def autocast_settings(precision: str, device: torch.device) -> dict:
    """torch.autocast's arguments for --precision: mixed precision in bf16 or fp16, or none (fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return dict(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def scored_logits(model: nn.Module, inputs: torch.Tensor, flip: bool) -> torch.Tensor:
    """The eval-mode model's logits, with `flip` the mean of each image's and its mirror image's (one pass of twice
    the batch): how validation, test and new images are scored."""
    if not flip:
        return model(inputs)
    own, mirrored = model(torch.cat([inputs, inputs.flip(-1)])).chunk(2)
    return (own + mirrored) / 2


class _Trainer:
    def __init__(self, model: nn.Module, preprocess: Preprocess, device: torch.device, precision: str, ranks: World,
                 class_weights: torch.Tensor | None = None, flip: bool = False):
        self.model, self.preprocess, self.device, self.ranks, self.flip = model, preprocess, device, ranks, flip
        # gradients are averaged across ranks by DDP; evaluation runs the plain model on each rank's share
        self.train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if ranks.distributed else model
        self.autocast = autocast_settings(precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
        self.loss = nn.CrossEntropyLoss(weight=None if class_weights is None else class_weights.to(device))

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.preprocess, self.device)

    def train_epoch(self, loader, optimizer, schedule, bar, epoch: int) -> tuple[float, float, int]:
        """Mean loss and accuracy over the epoch's images, and their number (all ranks together)."""
        set_train_mode(self.model)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)  # a new permutation each epoch, the same on every rank
        total_loss, correct, seen = 0.0, 0, 0
        for images, labels in _batches(loader):
            labels = labels.to(self.device)
            with torch.autocast(**self.autocast):
                logits = self.train_model(self.inputs(images))
                loss = self.loss(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            schedule.step()
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.update(len(labels) * self.ranks.size)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
        total_loss, correct, seen = (sum(v) for v in zip(*self.ranks.gather((total_loss, correct, seen)),
                                                          strict=True))
        return total_loss / seen, correct / seen, seen

    def predict(self, loader) -> np.ndarray:
        """Predicted classes of the loader's images (what validation needs each epoch: one number per image)."""
        return self._per_image(loader, lambda logits: logits.argmax(1), np.zeros(0, dtype=np.int64))

    def logits(self, loader, n_classes: int) -> np.ndarray:
        """The model's outputs for the loader's images (float32), for the temperature and the test probabilities."""
        return self._per_image(loader, lambda logits: logits.float(), np.zeros((0, n_classes), dtype=np.float32))

    @torch.inference_mode()
    def _per_image(self, loader, reduce: Callable[[torch.Tensor], torch.Tensor], empty: np.ndarray) -> np.ndarray:
        """`reduce` of the model's logits for the loader's images; under torchrun, every rank's share joined in
        order."""
        self.model.eval()
        parts = [empty]
        for images, _ in _batches(loader):
            with torch.autocast(**self.autocast):
                logits = scored_logits(self.model, self.inputs(images), self.flip)
            parts.append(reduce(logits).cpu().numpy())
        return np.concatenate(self.ranks.gather(np.concatenate(parts)))


def finetune(config: FinetuneConfig, resume: bool = False, log: Callable[[str], None] = print,
             dataset: Dataset | None = None) -> FinetuneResult:
    """Train, early-stop on validation accuracy (balanced accuracy with `config.balanced`), evaluate the best
    checkpoint once on the test split."""
    config.validate()
    ranks = world(config.device)
    if not ranks.is_main:
        log = lambda message: None  # noqa: E731
    torch.manual_seed(config.seed)
    dataset = dataset or resolve_dataset(config.dataset, config.data_root, config.limit_per_class)
    if ranks.is_main:  # the others' log is silent: no need to read the files for it
        for line in (dataset.note, copies_warning(dataset.test_copies)):
            if line:
                log(line)
    device = resolve_device(config.device)
    keep_freed_memory()
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    n_classes = len(dataset.class_names)
    model, preprocess, head = prepare_model(config, n_classes)
    model.to(device).to(memory_format=torch.channels_last)
    out = make_folder(config.out, "--out")

    train_split, test_split = dataset.splits["train"], dataset.splits["test"]
    train_idx, val_idx = validation_split(train_split.labels, config.val_fraction, config.seed)
    evaluate_transform = functools.partial(resize_and_crop, preprocess=preprocess)
    train_loader = _loader(_LabelledImages(train_split, train_idx, train_transform(preprocess)), config, True, device,
                           ranks)
    val_loader = _loader(_LabelledImages(train_split, np.array_split(val_idx, ranks.size)[ranks.rank],
                                         evaluate_transform), config, False, device, ranks)
    test_loader = _loader(_LabelledImages(test_split, np.array_split(np.arange(len(test_split)), ranks.size)[
        ranks.rank], evaluate_transform), config, False, device, ranks)

    optimizer = build_optimizer(parameter_groups(model, head, config), config)
    schedule = build_schedule(optimizer, config, len(train_loader))
    trainer = _Trainer(model, preprocess, device, config.precision, ranks, balanced_class_weights(
        train_split.labels[train_idx], n_classes) if config.balanced else None, config.flip)
    history, best_val, best_epoch, start_epoch, train_seconds, train_images = [], -1.0, 0, 1, 0.0, 0
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=True)
        if state["config"] != _comparable(config):
            raise UsageError(f"{last_path} was written by a run with other settings; use another --out or drop "
                             "--resume to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history, best_val, best_epoch = state["history"], state["best_val"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        train_seconds, train_images = state["train_seconds"], state["train_images"]
        log(f"resuming {config.mode} from epoch {state['epoch']} ({last_path})")
    elif resume:
        log(f"nothing to resume in {out}; starting from epoch 1")

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"fine-tuning {config.backbone} ({config.mode}: {trainable:,} of {total:,} parameters trainable) on "
        f"{dataset.name}: {len(train_idx)} train / {len(val_idx)} val / {len(test_split)} test images, "
        f"{preprocess.crop_size} px, {device.type}" + (f", {ranks.size} processes" if ranks.distributed else "")
        + (", classes weighted alike, checkpoints by validation balanced accuracy" if config.balanced else "")
        + (", validation and test images scored with their mirror images" if config.flip else ""))
    stale = sum(1 for row in history if row["epoch"] > best_epoch)
    for epoch in range(start_epoch, config.epochs + 1):
        if stale >= config.patience:
            log(f"early stop: validation {'balanced ' * config.balanced}accuracy has not improved for "
                f"{config.patience} epochs")
            break
        epoch_start = time.perf_counter()
        with tqdm(total=len(train_idx), unit="img", desc=f"{config.mode} epoch {epoch}/{config.epochs}",
                  file=sys.stderr, leave=False, dynamic_ncols=True, disable=not ranks.is_main) as bar:
            train_loss, train_acc, seen = trainer.train_epoch(train_loader, optimizer, schedule, bar, epoch)
        train_seconds += time.perf_counter() - epoch_start
        train_images += seen
        val_true, val_pred = train_split.labels[val_idx], trainer.predict(val_loader)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_accuracy": float(np.mean(val_pred == val_true)),
                        "val_balanced_accuracy": balanced_accuracy(val_true, val_pred),
                        "seconds": time.perf_counter() - epoch_start, "lr_head": optimizer.param_groups[0]["lr"]})
        log(f"epoch {epoch}: train loss {train_loss:.4f}, train acc {train_acc:.4f}, val acc "
            f"{history[-1]['val_accuracy']:.4f}" + (f", val balanced acc {history[-1]['val_balanced_accuracy']:.4f}"
                                                   if config.balanced else "")
            + f" ({history[-1]['seconds']:.1f} s)")
        val_score = history[-1][config.validation_score]
        improved = val_score > best_val
        if improved:
            best_val, best_epoch, stale = val_score, epoch, 0
        else:
            stale += 1
        if ranks.is_main:
            if improved:
                save_atomically({"model": model.state_dict(), "epoch": epoch, config.validation_score: val_score},
                                best_path)
            save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "schedule": schedule.state_dict(), "epoch": epoch, "history": history,
                             "best_val": best_val, "best_epoch": best_epoch, "config": _comparable(config),
                             "train_seconds": train_seconds, "train_images": train_images}, last_path)
            write_history(history, out)

    ranks.barrier()  # best.pt is written
    test_start = time.perf_counter()
    model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True)["model"])
    val_logits = trainer.logits(val_loader, n_classes)
    val_labels = train_split.labels[val_idx]
    temperature = fit_temperature(val_logits, val_labels)
    log(f"softmax temperature {temperature:.3f}, fitted on the validation split: its log loss "
        f"{softmax_log_loss(val_logits, val_labels, 1.0):.4f} -> "
        f"{softmax_log_loss(val_logits, val_labels, temperature):.4f}")
    probabilities = softmax(trainer.logits(test_loader, n_classes), temperature)
    predictions = probabilities.argmax(1)
    seconds = sum(row["seconds"] for row in history) + time.perf_counter() - test_start
    evaluation = evaluate(test_split.labels, predictions, dataset.class_names, probabilities)
    result = FinetuneResult(
        strategy=config.mode, test_accuracy=evaluation.accuracy, test_accuracy_interval=evaluation.accuracy_interval,
        test_balanced_accuracy=evaluation.balanced_accuracy, macro_f1=evaluation.macro_f1,
        test_log_loss=evaluation.log_loss, test_calibration_error=evaluation.calibration_error,
        test_by_confidence=evaluation.by_confidence, temperature=temperature,
        best_epoch=best_epoch, epochs_run=len(history), trainable_params=trainable, total_params=total,
        seconds=seconds,
        train_images_per_second=train_images / max(train_seconds, 1e-9), history=history,
        test_predictions=predictions.tolist(), out=str(out))
    if ranks.is_main:
        # with what `python -m pipelines predict` needs to rebuild the model and feed it as the test split was
        (out / "result.json").write_text(json.dumps({**result.to_dict(), "config": asdict(config),
                                                     "class_names": dataset.class_names,
                                                     "preprocess": preprocess.to_dict()}, indent=2))
        save_test_predictions(out / "predictions.csv", out / "mistakes.png", dataset.source,
                              np.asarray(test_split.ids), test_split.labels, predictions, probabilities,
                              dataset.class_names, f"{config.backbone} fine-tuned ({config.mode}): wrong test "
                              "images, true -> predicted")
    log(f"{config.mode}: test accuracy {result.test_accuracy:.4f}, balanced accuracy "
        f"{result.test_balanced_accuracy:.4f} (best epoch {best_epoch}, val {best_val:.4f}), "
        f"log loss {result.test_log_loss:.4f}, calibration error {result.test_calibration_error:.4f}\n"
        f"{format_by_confidence(result.test_by_confidence)}")
    return result


def write_history(history: list[dict], out: Path) -> None:
    """The per-epoch log as CSV and JSON, and its plot."""
    with open(out / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    (out / "history.json").write_text(json.dumps(history, indent=2))
    from pipelines.report import plot_history

    plot_history(history, out / "history.png")
