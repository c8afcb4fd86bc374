"""Datasets known by name: torchvision's (downloaded once) and scikit-learn's digits (ships offline; 8x8 grey
digits, far from ImageNet)."""

from __future__ import annotations

import errno
import gzip
import hashlib
import socket
import tarfile
import urllib.error
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from extract.datasets.images import to_rgb
from extract.datasets.splits import Dataset, Split, first_per_class
from extract.errors import UsageError, first_line

# name -> (torchvision class, keyword arguments for the train split, for the test split)
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}),
    "mnist": ("MNIST", {"train": True}, {"train": False}),
    "fashionmnist": ("FashionMNIST", {"train": True}, {"train": False}),
    "kmnist": ("KMNIST", {"train": True}, {"train": False}),
    "usps": ("USPS", {"train": True}, {"train": False}),
    "svhn": ("SVHN", {"split": "train"}, {"split": "test"}),
    "stl10": ("STL10", {"split": "train"}, {"split": "test"}),
    "food101": ("Food101", {"split": "train"}, {"split": "test"}),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}),
    "dtd": ("DTD", {"split": "train"}, {"split": "test"}),
    "gtsrb": ("GTSRB", {"split": "train"}, {"split": "test"}),
    "country211": ("Country211", {"split": "train"}, {"split": "test"}),
    "fgvcaircraft": ("FGVCAircraft", {"split": "trainval"}, {"split": "test"}),
    "oxfordiiitpet": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "pcam": ("PCAM", {"split": "train"}, {"split": "test"}),
}


BUILTIN_DATASETS = ("digits",)


@dataclass
class _TorchvisionSource:
    dataset: object
    indices: np.ndarray

    def image(self, index: int) -> Image.Image:
        image = self.dataset[int(self.indices[index])][0]
        return to_rgb(image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)))


def _torchvision_labels(dataset) -> np.ndarray:
    for attribute in ("targets", "labels", "_labels"):
        if hasattr(dataset, attribute):
            return np.asarray(getattr(dataset, attribute), dtype=np.int64)
    if hasattr(dataset, "_samples"):
        return np.asarray([label for _, label in dataset._samples], dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


def download_failure(name: str, folder: Path, error: Exception) -> str:
    """What went wrong getting a torchvision dataset, and what to do: a full disk, a damaged archive, or no copy
    here and no connection (or another failure, named)."""
    reason = first_line(error)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"the disk under {folder} filled up while getting dataset {name}; free space or pass --data-root to a " \
               "disk with room"
    if isinstance(error, tarfile.TarError | zipfile.BadZipFile | gzip.BadGzipFile | EOFError | zlib.error):
        return f"the archive of dataset {name} under {folder} is damaged ({reason}); delete {folder} and run again " \
               "to download it anew"
    if isinstance(error, urllib.error.URLError | ConnectionError | TimeoutError | socket.gaierror) or (
            isinstance(error, RuntimeError) and "not found" in reason):
        return f"dataset {name} is not under {folder} and could not be downloaded ({reason}); connect once, pass " \
               "--data-root to where it is, or give an image folder of class folders"
    return f"dataset {name} could not be read from {folder} ({type(error).__name__}: {reason}); delete {folder} and " \
           "run again to download it anew, or give an image folder of class folders"


def torchvision_dataset(name: str, data_root: Path, limit_per_class: int | None, download: bool) -> Dataset:
    import torchvision.datasets

    class_name, train_kwargs, test_kwargs = TORCHVISION_DATASETS[name]
    cls = getattr(torchvision.datasets, class_name)
    splits, digest, class_names = {}, hashlib.sha256(name.encode()), None
    for split_name, kwargs in (("train", train_kwargs), ("test", test_kwargs)):
        try:
            dataset = cls(str(data_root / name), download=download, **kwargs)
        except Exception as error:  # downloads fail with many types: say which failure it was
            raise UsageError(download_failure(name, data_root / name, error)) from None
        labels = _torchvision_labels(dataset)
        indices = first_per_class(labels, limit_per_class)
        labels = labels[indices]
        digest.update(f"{split_name}:{len(dataset)}:".encode() + indices.tobytes() + labels.tobytes())
        class_names = class_names or list(getattr(dataset, "classes", [])) or [
            str(c) for c in range(int(labels.max()) + 1)]
        ids = [f"{split_name}[{i}]" for i in indices]
        splits[split_name] = Split(split_name, ids, labels, _TorchvisionSource(dataset, indices))
    return Dataset(name, class_names, splits, digest.hexdigest())


@dataclass
class _ArraySource:
    images: np.ndarray

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")


def digits_dataset(limit_per_class: int | None) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    indices = np.arange(len(images))
    train_idx, test_idx = train_test_split(indices, test_size=0.25, stratify=digits.target, random_state=0)
    splits, digest = {}, hashlib.sha256(b"digits")
    for split_name, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        idx = idx[first_per_class(digits.target[idx], limit_per_class)]
        digest.update(idx.tobytes() + images[idx].tobytes())
        splits[split_name] = Split(split_name, [f"digits[{i}]" for i in idx], digits.target[idx].astype(np.int64),
                                   _ArraySource(images[idx]))
    return Dataset("digits", [str(d) for d in range(10)], splits, digest.hexdigest())
