"""Dataset resolution: a name, a folder or a table becomes train/test splits of (image, label) with a fingerprint.

Each split knows its samples' identities (file path or index) and how to load one image as RGB; nothing
here knows about models or caches.
"""

from __future__ import annotations

import csv
import difflib
import functools
import hashlib
import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import pi_heif
from PIL import Image, ImageOps

from extract.errors import UsageError

pi_heif.register_heif_opener()  # HEIC: the iPhone's photo format (decoding only; AVIF is Pillow's own)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".heic", ".heif",
                    ".avif")
TEST_SPLIT_NAMES = ("test", "val")
HELD_OUT_FRACTION = 0.25  # of each class, for a folder without a test split (as for digits)


class BadImageError(Exception):
    """An image that cannot be decoded; carries the sample's identity."""

    def __init__(self, sample_id: str, reason: str):
        super().__init__(f"{sample_id}: {reason}")
        self.sample_id = sample_id


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit and float scaled (not clipped), transparency over white. An RGB image comes
    back as it is: `convert` would copy it (20 ms for a 12-megapixel photo, a third of its decoding)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | Path, sample_id: str) -> Image.Image:
    """Decode fully (truncated files fail here, not later), refusing decompression bombs, and upright: a phone's
    portrait photo is stored sideways with an EXIF orientation tag, which viewers apply and so does this."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                return to_rgb(image)
    except Image.DecompressionBombWarning as error:
        raise BadImageError(sample_id, f"too large to decode safely ({error})") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadImageError(sample_id, str(error) or type(error).__name__) from None


@dataclass
class Split:
    """One split: sample identities, integer labels, and a loader for image i."""

    name: str
    ids: list[str]
    labels: np.ndarray
    source: object = field(repr=False)
    # (size, mtime_ns) of each image file, as the fingerprint hashes them: kept with the features, so that a later
    # entry of a changed dataset can take the rows of the files it still holds unchanged. None: not files.
    stamps: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Image.Image:
        return self.source.image(index)

    def rows(self, start: int, stop: int) -> Split:
        """Rows [start, stop) as a split of their own (one rank's share under torchrun)."""
        return self.subset(np.arange(start, stop))

    def subset(self, rows: np.ndarray) -> Split:
        """The given rows, in that order, as a split of their own."""
        return Split(self.name, [self.ids[i] for i in rows], self.labels[rows], _Rows(self.source, rows),
                     None if self.stamps is None else self.stamps[rows])


@dataclass
class _Rows:
    source: object
    rows: np.ndarray

    def image(self, index: int) -> Image.Image:
        return self.source.image(int(self.rows[index]))


@dataclass
class Dataset:
    """A resolved dataset: what it is called, its classes, its splits and a fingerprint of its content."""

    name: str
    class_names: list[str]
    splits: dict[str, Split]
    fingerprint: str
    source: str = ""
    limit_per_class: int | None = None
    note: str = ""  # how the splits were made where the user did not make them, and which files were left out

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in self.name).strip("-") or "dataset"

    @functools.cached_property
    def test_copies(self) -> list[tuple[str, str]]:
        """`copies_across_splits`, read once per dataset (`compare` fine-tunes several times on one)."""
        return copies_across_splits(self)


# ---- image folders ------------------------------------------------------------------------------------------


@dataclass
class _FolderSource:
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


def _class_folders(split_dir: Path, root: Path, left_out: Counter) -> dict[str, list[str]]:
    """Class name -> its image files, as paths relative to the dataset's root; other files counted in `left_out`."""
    classes = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[class_dir.name] = sorted(str(f.relative_to(root)) for f in images_under(class_dir, left_out))
    return classes


def _left_out_note(left_out: Counter) -> str:
    if not left_out:
        return ""
    kinds = ", ".join(f"{suffix} ({count})" for suffix, count in sorted(left_out.items(), key=lambda x: (-x[1], x[0])))
    return f"left out {left_out.total()} files that are not images this tool reads: {kinds}"


def _check_classes(classes: dict[str, list[str]], where: Path) -> None:
    if len(classes) < 2:
        loose = sum(1 for path in images_under(where) if path.parent == where)
        if loose:  # a plain folder of photos: say how to label them, and where unlabelled ones are embedded
            raise UsageError(f"{where} holds {loose} images but {len(classes)} class folder(s): put each class's "
                             f"images in a folder of its own ({where}/<class>/), or list them in a CSV table "
                             "(image,label); features of unlabelled images: Extractor.images, README 'From Python'")
        raise UsageError(f"{where} holds {len(classes)} class folder(s); a classifier needs at least 2")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise UsageError(f"class folder(s) {', '.join(empty)} in {where} hold no images "
                         f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")


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


def _held_out_note(why: str) -> str:
    return (f"{why}: {HELD_OUT_FRACTION:.0%} of each class held out as the test split (chosen by a hash of the file "
            "names: the same files every run)")


def _folder_dataset(root: Path, limit_per_class: int | None) -> Dataset:
    """root/{train,test or val}/<class>/*; or, without a test split, root/train/<class>/* or root/<class>/* with
    a held-out test split (`hold_out`)."""
    if root.is_file():
        tables = " or ".join("*" + suffix for suffix in CSV_SUFFIXES)
        raise UsageError(f"{root} is a file, not a dataset folder; give a folder of class folders (or with train/ and "
                         f"test/ inside), or a table of image,label rows named {tables}")
    if not root.is_dir():
        raise UsageError(f"dataset folder {root} does not exist; give a folder of class folders, or with train/ and "
                         "test/ inside")
    test_name = next((n for n in TEST_SPLIT_NAMES if (root / n).is_dir()), None)
    notes, left_out = [], Counter()
    if (root / "train").is_dir() and test_name:
        train, test = _class_folders(root / "train", root, left_out), _class_folders(root / test_name, root, left_out)
        if set(train) != set(test):
            only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            raise UsageError(f"class folders differ between train/ and {test_name}/ in {root} "
                             f"(only in train: {only_train or '-'}; only in {test_name}: {only_test or '-'}); "
                             "make both hold the same class folders")
        _check_classes(train, root / "train")
        _check_classes(test, root / test_name)
    elif test_name:
        raise UsageError(f"{root} has a {test_name}/ but no train/ folder; add train/ with one folder per class")
    else:
        labelled = root / "train" if (root / "train").is_dir() else root
        classes = _class_folders(labelled, root, left_out)
        _check_classes(classes, labelled)
        train, test = hold_out(classes)
        notes.append(_held_out_note(f"no test/ or val/ folder in {root}"))
    notes.append(_left_out_note(left_out))
    return _files_dataset(root.resolve().name, root, train, test, limit_per_class, notes)


def _files_dataset(name: str, root: Path, train: dict[str, list[str]], test: dict[str, list[str]],
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
        splits[split_name] = Split(split_name, files, np.asarray(labels, dtype=np.int64), _FolderSource(root, files),
                                   np.asarray(stamps, dtype=np.int64).reshape(-1, 2))
    return Dataset(name, class_names, splits, digest.hexdigest(), note="\n".join(filter(None, notes)))


# ---- a CSV (or TSV) of image paths and labels ----------------------------------------------------------------

CSV_SUFFIXES = (".csv", ".tsv")
IMAGE_COLUMNS = ("image", "path", "file", "filename", "filepath", "image_path", "img")
LABEL_COLUMNS = ("label", "class", "category", "target", "class_name")
SPLIT_COLUMN = "split"


def _csv_dataset(table: Path, limit_per_class: int | None) -> Dataset:
    """A table with a header naming the image column (paths relative to the table's folder) and the label column,
    and optionally a `split` column (train, test or val); without it, `hold_out` makes the test split."""
    columns, rows = _read_table(table)
    header = {column.strip().lower(): column for column in columns}
    image_column = next((header[c] for c in IMAGE_COLUMNS if c in header), None)
    label_column = next((header[c] for c in LABEL_COLUMNS if c in header), None)
    if image_column is None or label_column is None:
        raise UsageError(f"{table} needs a header row naming its image column ({', '.join(IMAGE_COLUMNS)}) and its "
                         f"label column ({', '.join(LABEL_COLUMNS)}); it has {', '.join(columns)}")
    split_column = header.get(SPLIT_COLUMN)
    root = table.parent
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    first_line: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        file, label = (row[image_column] or "").strip(), (row[label_column] or "").strip()  # None: a short row
        if not file or not label:
            raise UsageError(f"{table} line {number}: an empty image path or label; fill it in or remove the line")
        if first_line.setdefault(file, number) != number:
            raise UsageError(f"{table} line {number}: image {file} is listed again (first on line {first_line[file]}); "
                             "list each image once")
        split = (row[split_column] or "").strip().lower() if split_column else "train"
        split = "test" if split in TEST_SPLIT_NAMES else split
        if split not in by_split:
            raise UsageError(f"{table} line {number}: split {row[split_column]!r}; use train, test or val")
        if not (root / file).is_file():
            raise UsageError(f"{table} line {number}: image {file} does not exist under {root} (paths are read "
                             "relative to the table's folder)")
        by_split[split].setdefault(label, []).append(file)
    train, test = by_split["train"], by_split["test"]
    if len(train) < 2:
        raise UsageError(f"{table} holds {len(train)} label(s) in its train rows; a classifier needs at least 2")
    notes = []
    if not test:
        train, test = hold_out(train)
        notes.append(_held_out_note(f"no test rows in {table.name}"))
    elif set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)) or "-", sorted(set(test) - set(train)) or "-"
        raise UsageError(f"the labels of the train and test rows of {table} differ (only in train: {only_train}; "
                         f"only in test: {only_test}); give every label rows in both splits")
    return _files_dataset(f"{root.resolve().name}-{table.stem}", root, train, test, limit_per_class, notes)


def _read_table(table: Path) -> tuple[list[str], list[dict[str, str | None]]]:
    """The header's column names and one dict per row; comma-, semicolon- or tab-separated."""
    try:
        text = table.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {table}: {error}") from None
    first_line = text.partition("\n")[0]
    delimiter = "\t" if table.suffix.lower() == ".tsv" else max(",;\t", key=first_line.count)
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = list(reader)
    if not reader.fieldnames or not rows:
        raise UsageError(f"{table} holds no rows; give a header row and one row per image")
    return list(reader.fieldnames), rows


# ---- torchvision datasets ------------------------------------------------------------------------------------

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


def _first_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        keep[np.flatnonzero(labels == label)[:limit]] = True
    return np.flatnonzero(keep)


def _torchvision_dataset(name: str, data_root: Path, limit_per_class: int | None, download: bool) -> Dataset:
    import torchvision.datasets

    class_name, train_kwargs, test_kwargs = TORCHVISION_DATASETS[name]
    cls = getattr(torchvision.datasets, class_name)
    splits, digest, class_names = {}, hashlib.sha256(name.encode()), None
    for split_name, kwargs in (("train", train_kwargs), ("test", test_kwargs)):
        try:
            dataset = cls(str(data_root / name), download=download, **kwargs)
        except Exception as error:  # offline downloads fail with many types; all mean the same to the user
            raise UsageError(f"dataset {name} is not under {data_root / name} and could not be downloaded "
                             f"({str(error).splitlines()[0][:160]}); connect once, pass --data-root to where it "
                             "is, or give an image folder of class folders") from None
        labels = _torchvision_labels(dataset)
        indices = _first_per_class(labels, limit_per_class)
        labels = labels[indices]
        digest.update(f"{split_name}:{len(dataset)}:".encode() + indices.tobytes() + labels.tobytes())
        class_names = class_names or list(getattr(dataset, "classes", [])) or [
            str(c) for c in range(int(labels.max()) + 1)]
        ids = [f"{split_name}[{i}]" for i in indices]
        splits[split_name] = Split(split_name, ids, labels, _TorchvisionSource(dataset, indices))
    return Dataset(name, class_names, splits, digest.hexdigest())


# ---- scikit-learn's digits (ships offline; 8x8 grey digits, far from ImageNet) ------------------------------


@dataclass
class _ArraySource:
    images: np.ndarray

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")


def _digits_dataset(limit_per_class: int | None) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    indices = np.arange(len(images))
    train_idx, test_idx = train_test_split(indices, test_size=0.25, stratify=digits.target, random_state=0)
    splits, digest = {}, hashlib.sha256(b"digits")
    for split_name, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        idx = idx[_first_per_class(digits.target[idx], limit_per_class)]
        digest.update(idx.tobytes() + images[idx].tobytes())
        splits[split_name] = Split(split_name, [f"digits[{i}]" for i in idx], digits.target[idx].astype(np.int64),
                                   _ArraySource(images[idx]))
    return Dataset("digits", [str(d) for d in range(10)], splits, digest.hexdigest())


HEAD_BYTES = 1 << 16  # what is read of each file of a size both splits hold; whole files only where heads match


def _digest(path: Path, limit: int = -1) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(limit)).digest()


def copies_across_splits(dataset: Dataset) -> list[tuple[str, str]]:
    """(test file, train file) pairs with the same bytes: a test image the model was trained on, which makes the test
    accuracy look better than it is. Image folders only. Only files of a size both splits hold are read, their first
    64 KiB, so photos cost next to nothing (all 60,000 of CIFAR-10's small JPEGs: 1.0-1.2 s, 5-6 s from disk)."""
    train, test = dataset.splits["train"].source, dataset.splits["test"].source
    if not isinstance(train, _FolderSource) or not isinstance(test, _FolderSource):
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


# ---- the one entry point -------------------------------------------------------------------------------------


def resolve_dataset(spec: str, data_root: str | Path = "data", limit_per_class: int | None = None,
                    download: bool = True) -> Dataset:
    """A dataset name (torchvision's, or `digits`) or an image-folder path, resolved to train/test splits."""
    if limit_per_class is not None and limit_per_class < 1:
        raise UsageError(f"--limit-per-class must be 1 or more, not {limit_per_class}")
    key = spec.lower().replace("-", "").replace("_", "")
    if key in TORCHVISION_DATASETS and not Path(spec).exists():
        dataset = _torchvision_dataset(key, Path(data_root), limit_per_class, download)
    elif key in BUILTIN_DATASETS and not Path(spec).exists():
        dataset = _digits_dataset(limit_per_class)
    elif Path(spec).suffix.lower() in CSV_SUFFIXES:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(f"table {path} does not exist; give a CSV of image paths and labels, or a folder")
        dataset = _csv_dataset(path, limit_per_class)
        spec = str(path.resolve())
    elif Path(spec).expanduser().exists() or "/" in spec or spec.startswith("."):
        path = Path(spec).expanduser()
        dataset = _folder_dataset(path, limit_per_class)
        spec = str(path.resolve())
    else:
        _unknown_dataset(spec, key)
    dataset.source, dataset.limit_per_class = spec, limit_per_class
    return dataset


def sample_file(source: str, sample_id: str) -> Path | None:
    """The image file a cached sample id names, given the cache's `dataset_source`: ids of image folders and tables
    are paths relative to the folder or the table's folder; None for ids that are indices (torchvision's datasets,
    digits) or a dataset no longer where it was."""
    root = Path(source)
    if root.suffix.lower() in CSV_SUFFIXES:
        root = root.parent
    file = root / sample_id
    return file if root.is_absolute() and file.is_file() else None


def _unknown_dataset(spec: str, key: str) -> NoReturn:
    names = sorted(TORCHVISION_DATASETS) + list(BUILTIN_DATASETS)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(f"unknown dataset {spec!r}: {hint}give one of {', '.join(names)}, "
                     "a folder of class folders (or of train/ and test/ holding them), or a CSV of images and labels")
