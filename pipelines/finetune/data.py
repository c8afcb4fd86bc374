"""What fine-tuning feeds the network: augmented train images, the validation split carved from train, loaders
(sharded under torchrun), and class weights for --balanced."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset

from extract.datasets import BadImageError, Dataset, Split, keep_train_per_class, resolve_dataset
from extract.distributed import World
from extract.errors import UsageError
from extract.preprocess import Preprocess
from extract.runtime import default_workers
from pipelines.finetune.config import FinetuneConfig


def run_dataset(config: FinetuneConfig, dataset: Dataset | None = None,
                log: Callable[[str], None] | None = None) -> Dataset:
    """The run's dataset: the config's, or `dataset` where the caller resolved it already, cut to
    `config.train_per_class` either way (a dataset cut already stays as it is): the learning curve resolves the
    whole dataset once and hands it to every size. With `config.skip_bad`, a dataset the caller did not hand in is
    read through once and its unreadable images left out, each named through `log`."""
    if dataset is None:
        dataset = resolve_dataset(config.dataset, config.data_root, config.limit_per_class,
                                  train_per_class=config.train_per_class)
        return without_unreadable(dataset, log or (lambda message: None)) if config.skip_bad else dataset
    return keep_train_per_class(dataset, config.train_per_class) if config.train_per_class else dataset


def without_unreadable(dataset: Dataset, log: Callable[[str], None]) -> Dataset:
    """The dataset without the images that cannot be decoded (--skip-bad), each named through `log`: a pass of
    decoding before training, so that every epoch, validation and test sees the same images."""
    splits, skipped = {}, []
    for name, split in dataset.splits.items():
        keep = []
        for row in range(len(split)):
            try:
                split.image(row)
                keep.append(row)
            except BadImageError as error:
                skipped.append(f"{name}:{split.ids[row]}")
                log(f"skipped unreadable: {error}")
        splits[name] = split if len(keep) == len(split) else split.subset(np.asarray(keep, dtype=np.int64))
    if not skipped:
        return dataset
    fingerprint = hashlib.sha256(f"{dataset.fingerprint}:skipped={','.join(skipped)}".encode()).hexdigest()
    return replace(dataset, splits=splits, fingerprint=fingerprint)


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Each class's loss weight: the inverse of its train count, scaled as scikit-learn's class_weight='balanced'
    (a class without train images keeps weight 1; it never appears in the loss)."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = np.ones(n_classes)
    present = np.unique(labels)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


SMALLEST_CROP_AREA = 0.64  # of the image, as BiT's fine-tuning crops (bench/augmentation.py: 0.25 lost 2 points)


def train_transform(preprocess: Preprocess) -> T.Compose:
    """Random resized crop and horizontal flip at the backbone's input size and interpolation (uint8 out). The crop
    keeps most of the image: fine-tuning runs few epochs, where stronger augmentation costs more than it gains."""
    return T.Compose([
        T.PILToTensor(),
        T.RandomResizedCrop(preprocess.crop_size, scale=(SMALLEST_CROP_AREA, 1.0),
                            interpolation=T.InterpolationMode(preprocess.interpolation), antialias=True),
        T.RandomHorizontalFlip(),
    ])


class LabelledImages(TorchDataset):
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


def _labelled_batch(items: list) -> tuple[torch.Tensor, torch.Tensor] | _UnreadableImages:
    bad = [reason for image, reason in items if image is None]
    if bad:
        return _UnreadableImages(bad)
    return torch.utils.data.default_collate(items)


def batches(loader: DataLoader):
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


def make_loader(dataset: TorchDataset, config: FinetuneConfig, shuffle: bool, device: torch.device,
            ranks: World) -> DataLoader:
    """Training (shuffle): each rank draws its own part of every epoch's permutation, batch_size / ranks at a
    time, so one step still sees --batch-size images. Evaluation: the rank's own contiguous share, in order."""
    workers = default_workers(device) if config.workers is None else config.workers
    sampler = DistributedSampler(dataset, ranks.size, ranks.rank, shuffle=True, seed=config.seed) \
        if shuffle and ranks.distributed else None
    generator = torch.Generator().manual_seed(config.seed)
    # training workers start anew each epoch, seeded from `generator`: its state saved with a checkpoint then gives
    # a resumed run the same augmentation (persistent workers would carry their random state across epochs)
    return DataLoader(dataset, batch_size=max(1, config.batch_size // ranks.size), shuffle=shuffle and not sampler,
                      sampler=sampler, num_workers=workers, collate_fn=_labelled_batch,
                      pin_memory=device.type == "cuda", drop_last=False, generator=generator,
                      persistent_workers=workers > 0 and not shuffle)
