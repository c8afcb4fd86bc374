"""The optimiser and the learning-rate schedule of a fine-tuning run, from torch's own schedulers."""

from __future__ import annotations

import math
import warnings

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR

from pipelines.finetune.config import FinetuneConfig


def build_optimizer(groups: list[dict], config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)


def build_schedule(optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int) -> LRScheduler:
    """Linear warm-up from lr / (warm-up steps + 1), then cosine decay to zero or steps of x0.1 at 50% and 75% of
    what follows the warm-up; stepped per batch."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    rest = max(1, total - warmup)
    if config.schedule == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=rest)
    else:
        main = MultiStepLR(optimizer, milestones=[math.ceil(rest * share) for share in (0.5, 0.75)], gamma=0.1)
    if warmup < 1:
        return main
    ramp = LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def advance(schedule: LRScheduler, optimizer: torch.optim.Optimizer, steps: int, saved_optimizer: dict) -> None:
    """Bring a new schedule `steps` batches in, then load the optimiser's saved state (momentum, ...) and give it the
    schedule's learning rates: where a resumed run picks up. Stepping the schedule the same way as the run did gives
    the same rates bit for bit, and the new total where --epochs changed (a loaded schedule would keep the old)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # stepped without optimizer.step(): on purpose
        for _ in range(steps):
            schedule.step()
    optimizer.load_state_dict(saved_optimizer)
    for group, lr in zip(optimizer.param_groups, schedule.get_last_lr(), strict=True):
        group["lr"] = lr
