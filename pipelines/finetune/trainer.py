"""The training loop of one fine-tuning run: epochs of mixed-precision steps (DistributedDataParallel under
torchrun), and the logits of validation and test images, mirrored too with --flip."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from extract.distributed import World
from extract.layers import mirror_mean
from extract.preprocess import Preprocess, normalize
from extract.runtime import autocast
from pipelines.finetune.data import batches
from pipelines.finetune.surgery import set_train_mode


def scored_logits(model: nn.Module, inputs: torch.Tensor, flip: bool) -> torch.Tensor:
    """The eval-mode model's logits, with `flip` the mean of each image's and its mirror image's (one pass of twice
    the batch): how validation, test and new images are scored."""
    return mirror_mean(model, inputs) if flip else model(inputs)


class Trainer:
    def __init__(self, model: nn.Module, preprocess: Preprocess, device: torch.device, precision: str, ranks: World,
                 class_weights: torch.Tensor | None = None, flip: bool = False, keep_norm_statistics: bool = False,
                 progress: bool = False):
        self.model, self.preprocess, self.device, self.ranks, self.flip = model, preprocess, device, ranks, flip
        self.progress = progress and ranks.is_main  # bars over the validation and test passes on stderr
        self.keep_norm_statistics = keep_norm_statistics  # batch norms use their running statistics in training
        # gradients are averaged across ranks by DDP; evaluation runs the plain model on each rank's share
        self.train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if ranks.distributed else model
        self.precision = precision
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
        self.loss = nn.CrossEntropyLoss(weight=None if class_weights is None else class_weights.to(device))

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.preprocess, self.device)

    def train_epoch(self, loader, optimizer, schedule, bar, epoch: int) -> tuple[float, float, int, float | None]:
        """Mean loss and accuracy over the epoch's images and their number (all ranks together), and the mean norm of
        the steps' gradients."""
        set_train_mode(self.model, self.keep_norm_statistics)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)  # a new permutation each epoch, the same on every rank
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        total_loss, correct, seen, norms = 0.0, 0, 0, []
        for images, labels in batches(loader):
            labels = labels.to(self.device)
            with autocast(self.precision, self.device):
                logits = self.train_model(self.inputs(images))
                loss = self.loss(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)  # the true gradients to measure (nothing to undo without fp16)
            norms.append(float(nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])))
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
        finite = [norm for norm in norms if math.isfinite(norm)]  # fp16 steps that overflowed were skipped
        return total_loss / seen, correct / seen, seen, float(np.mean(finite)) if finite else None

    def predict(self, loader, desc: str = "validation") -> np.ndarray:
        """Predicted classes of the loader's images (what validation needs each epoch: one number per image)."""
        return self._per_image(loader, lambda logits: logits.argmax(1), np.zeros(0, dtype=np.int64), desc)

    def logits(self, loader, n_classes: int, desc: str = "test") -> np.ndarray:
        """The model's outputs for the loader's images (float32), for the temperature and the test probabilities."""
        return self._per_image(loader, lambda logits: logits.float(), np.zeros((0, n_classes), dtype=np.float32),
                               desc)

    @torch.inference_mode()
    def _per_image(self, loader, reduce: Callable[[torch.Tensor], torch.Tensor], empty: np.ndarray,
                   desc: str) -> np.ndarray:
        """`reduce` of the model's logits for the loader's images; under torchrun, every rank's share joined in
        order."""
        self.model.eval()
        parts = [empty]
        with tqdm(total=len(loader.dataset), unit="img", desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                  disable=not self.progress) as bar:
            for images, _ in batches(loader):
                with autocast(self.precision, self.device):
                    logits = scored_logits(self.model, self.inputs(images), self.flip)
                parts.append(reduce(logits).cpu().numpy())
                bar.update(len(images))
        return np.concatenate(self.ranks.gather(np.concatenate(parts)))
