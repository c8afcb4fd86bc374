"""Datasets of image files: finding them, holding out a test split, the fingerprint, and test copies of train files."""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from extract.datasets.images import IMAGE_EXTENSIONS, load_image
from extract.datasets.splits import Dataset, Split
from extract.errors import UsageError

HELD_OUT_FRACTION = 0.25  # of each class, for a folder without a test split (as for digits)


@dataclass
class FileSource:
    root: Path
    files: list[str]

    def image(self, index: int) -> Image.Image:
        return load_image(self.root / self.files[index], self.files[index])


def images_under(folder: Path, left_out: Counter | None = None) -> list[Path]:
    """The image files under a folder, searched recursively, sorted. Hidden files and folders are skipped (macOS
    writes a `._NAME.jpg` beside each photo copied to some drives, which is no image); other files are counted by
    suffix into `left_out`."""
    images = []
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for path in (Path(directory, name) for name in files if not name.startswith(".")):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                if path.is_file():  # not a broken link
                    images.append(path)
            elif left_out is not None:
                left_out[path.suffix.lower() or "no suffix"] += 1
    return sorted(images)


def hold_out(classes: dict[str, list[str]], fraction: float = HELD_OUT_FRACTION) -> tuple[dict, dict]:
    """Split each class's files into (train, test): the `fraction` (at least one file) whose paths hash lowest go to
    test. No random state, so the same files give the same split anywhere, and adding images to a class moves at
    most one earlier file across the line."""
    train, test = {}, {}
    for name, files in classes.items():
        if len(files) < 2:
            raise UsageError(f"class {name} holds 1 image; holding out test images needs 2 or more per class")
        by_hash = sorted(files, key=lambda file: hashlib.sha256(file.encode()).hexdigest())
        cut = max(1, round(len(files) * fraction))
        test[name], train[name] = sorted(by_hash[:cut]), sorted(by_hash[cut:])
    return train, test


def held_out_note(why: str) -> str:
    return (f"{why}: {HELD_OUT_FRACTION:.0%} of each class held out as the test split (chosen by a hash of the file "
            "names: the same files every run)")


def files_dataset(name: str, root: Path, train: dict[str, list[str]], test: dict[str, list[str]],
                   limit_per_class: int | None, notes: list[str]) -> Dataset:
    """Splits of image files (class -> paths relative to `root`), fingerprinted by path, size, mtime and label."""
    class_names = sorted(train)  # as torchvision's ImageFolder orders them
    splits, digest = {}, hashlib.sha256()
    for split_name, classes in (("train", train), ("test", test)):
        files, labels, stamps = [], [], []
        for label, class_name in enumerate(class_names):
            chosen = classes[class_name][:limit_per_class]
            files += chosen
            labels += [label] * len(chosen)
        for file, label in zip(files, labels, strict=True):
            stat = (root / file).stat()
            digest.update(f"{file}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
            stamps.append((stat.st_size, stat.st_mtime_ns))
        splits[split_name] = Split(split_name, files, np.asarray(labels, dtype=np.int64), FileSource(root, files),
                                   np.asarray(stamps, dtype=np.int64).reshape(-1, 2))
    return Dataset(name, class_names, splits, digest.hexdigest(), note="\n".join(filter(None, notes)))


HEAD_BYTES = 1 << 16  # what is read of each file of a size both splits hold; whole files only where heads match


def _digest(path: Path, limit: int = -1) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(limit)).digest()


def copies_across_splits(dataset: Dataset) -> list[tuple[str, str]]:
    """(test file, train file) pairs with the same bytes: a test image the model was trained on, which makes the test
    accuracy look better than it is. Image folders only. Only files of a size both splits hold are read, their first
    64 KiB, so photos cost next to nothing (all 60,000 of CIFAR-10's small JPEGs: 1.0-1.2 s, 5-6 s from disk)."""
    train, test = dataset.splits["train"].source, dataset.splits["test"].source
    if not isinstance(train, FileSource) or not isinstance(test, FileSource):
        return []
    try:
        return _copies(train.root, train.files, test.files)
    except OSError:  # a file that cannot be read: extraction names it itself
        return []


def _copies(root: Path, train_files: list[str], test_files: list[str]) -> list[tuple[str, str]]:
    """`copies_across_splits` for files given as paths relative to `root`."""
    size = {file: (root / file).stat().st_size for file in (*train_files, *test_files)}
    shared = {size[file] for file in train_files} & {size[file] for file in test_files}
    by_head: dict[tuple[int, bytes], list[str]] = {}
    for file in train_files:
        if size[file] in shared:
            by_head.setdefault((size[file], _digest(root / file, HEAD_BYTES)), []).append(file)
    whole = functools.cache(lambda file: _digest(root / file))
    copies = []
    for file in (f for f in test_files if size[f] in shared):
        candidates = by_head.get((size[file], _digest(root / file, HEAD_BYTES)), [])
        original = next((c for c in candidates if size[file] <= HEAD_BYTES or whole(c) == whole(file)), None)
        if original is not None:
            copies.append((file, original))
    return copies


def copies_warning(copies: list[tuple[str, str]]) -> str:
    """One line naming `copies_across_splits`'s pairs, or "" if there are none."""
    if not copies:
        return ""
    (test_file, train_file), more = copies[0], ", ..." if len(copies) > 1 else ""
    return (f"warning: {len(copies)} test image(s) are byte-for-byte copies of train images ({test_file} = "
            f"{train_file}{more}): the test accuracy will count them as unseen; remove them from one split")
