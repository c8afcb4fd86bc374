"""How long each strategy takes here: speeds measured on this machine times the dataset's size.

Both speeds are measured directly on random images of the run's size: a few forward passes of the frozen network
(extraction), a few forward and backward steps of the whole network (fine-tuning). They leave out image decoding,
so on a slow disk the times are lower bounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from extract.backbones import create_backbone
from pipelines.finetune.config import FinetuneConfig
from pipelines.finetune.surgery import replace_classifier

STRATEGY_COST = ("frozen", "frozen-layers", "lp-ft", "full")  # what `expected_minutes` knows
VAL_FRACTION = FinetuneConfig.val_fraction  # held out of the train split, predicted once per epoch
HEAD_SECONDS_PER_IMAGE = 0.01  # the frozen heads' grid searches (logreg + SVM), per train image: docs/advisor.md
DEFAULT_EPOCHS = FinetuneConfig.epochs  # compare's default (an upper bound: early stopping may end it sooner)


@dataclass(frozen=True)
class Speeds:
    """Images per second on this machine at the run's input size."""

    extract: float  # forward pass of the frozen network
    train: float  # forward and backward pass of the whole network


def measure_speeds(backbone: str, image_size: int | None, classes: int, batch_size: int = 16,
                   steps: int = 2) -> Speeds:
    """Images per second of inference, then of SGD steps through the whole network (each after a warm-up step),
    drawn without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        return _measured(create_backbone(backbone, image_size=image_size), classes, batch_size, steps)


def _measured(built, classes: int, batch_size: int, steps: int) -> Speeds:
    model = built.model
    replace_classifier(model, classes)
    size = built.preprocess.crop_size
    images = torch.randn(batch_size, 3, size, size)
    labels = torch.arange(batch_size) % classes

    def timed(step) -> float:
        step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * batch_size / (time.perf_counter() - started)

    with torch.inference_mode():
        extract = timed(lambda: model(images))
    model.requires_grad_(True).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    loss = nn.CrossEntropyLoss()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(model(images), labels).backward()
        optimizer.step()

    return Speeds(extract=extract, train=timed(train_step))


def expected_minutes(strategy: str, train_images: int, test_images: int, speeds: Speeds,
                     epochs: int = DEFAULT_EPOCHS) -> float:
    """Minutes `compare --strategies STRATEGY` takes here: the passes over the images each strategy makes."""
    if strategy not in STRATEGY_COST:
        raise ValueError(f"no time model for {strategy!r}; one of {', '.join(STRATEGY_COST)}")
    extraction = (train_images + test_images) / speeds.extract
    heads = HEAD_SECONDS_PER_IMAGE * train_images * (2 if strategy == "frozen-layers" else 1)
    if strategy in ("frozen", "frozen-layers"):
        return (extraction + heads) / 60
    val = VAL_FRACTION * train_images
    fine_tuning = epochs * ((train_images - val) / speeds.train + val / speeds.extract) + test_images / speeds.extract
    probe = extraction + heads if strategy == "lp-ft" else 0.0  # lp-ft starts from the frozen features' probe
    return (probe + fine_tuning) / 60
