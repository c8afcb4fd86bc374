"""The HDF5 feature cache: the only module that knows the file layout. Its root attributes are the fields of
`CacheInfo`, written and read through it alone (no other module touches an attribute by its string key).

Layout of one cache entry (one file per dataset x backbone x weights x layer x pooling x input size):

    /                 attrs: the fields of `CacheInfo` (dicts and lists as JSON)
    /<split>/features float32 (N, D), chunked, written as computed; several layers sit side by side
    /<split>/labels   int64 (N,)
    /<split>/ids      UTF-8 strings (N,): file path relative to the dataset root, or index
    /<split>/stamps   int64 (N, 2): (size, mtime_ns) of each image file, where the samples are files
    /<split>          attrs: num_samples, rows_written, skipped (JSON list of ids that could not be read)

A file is written as `<entry>.h5.partial` and renamed to `<entry>.h5` only when every split is written,
so a `.h5` is complete by construction (and says so in `complete`). A `.partial` is resumed by the same command.
Under torchrun each rank writes its rows as such a file in `<entry>.parts/` and rank 0 merges them (`merge_parts`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import h5py
import numpy as np

from extract.errors import UsageError
from extract.paths import check_free_space, name_in_paths

FORMAT_VERSION = 2  # 2 added several layers per file (`layout`); format 1 files (one layer) are still read
READABLE_FORMATS = (1, 2)
SUFFIX = ".h5"
DEFAULT_CACHE_DIR = "cache"
PARTIAL_SUFFIX = ".h5.partial"
# The key of `CacheInfo.transform` that marks features averaged with the mirror image's (`extract --flip`)
FLIP_KEY = "flip"


@dataclass
class CacheInfo:
    """Every root attribute of a cache entry, typed. The fields up to `versions` decide what the features are: an
    entry is reused only if all of them match (`IDENTITY_FIELDS`), and their hash is part of its name."""

    dataset: str  # the dataset's name, as it appears in file names
    dataset_fingerprint: str  # sha256 of the sample ids, labels and (for files) sizes and mtimes
    backbone: str
    weights: str  # "none", a weights enum or tag, "package:imagenet", or a state-dict file's path
    weights_sha256: str
    layer: str  # the layers, comma-separated
    pool: str
    image_size: int
    precision: str
    transform: dict  # the preprocessing; its FLIP_KEY marks features averaged with the mirror image's
    versions: dict  # of the libraries that change the numbers
    class_names: list[str] = field(default_factory=list)
    layer_module: dict[str, str] = field(default_factory=dict)  # layer -> the module it is read from
    layout: list[list] | None = None  # [layer, first column, end column] of each layer; None in format 1
    dataset_source: str = ""  # where the data came from, so --verify can fingerprint it again
    limit_per_class: int = 0
    train_per_class: int = 0  # the train split cut to the first N of each class (0: whole)
    # written with the file
    format_version: int = FORMAT_VERSION
    complete: bool = False
    feature_dim: int = 0
    # of the run that finished the file
    created: str = ""
    extract_seconds: float = 0.0
    images_per_second: float = 0.0
    compiled: bool = False
    ranks: int = 1  # torchrun processes
    test_copies_of_train: int = 0  # test files that are byte copies of train files
    rows_reused_from: str = ""  # the earlier entry whose rows of unchanged files were copied

    @classmethod
    def from_attrs(cls, attrs) -> CacheInfo:
        """Read from an HDF5 attribute set; fields an older file lacks keep their defaults."""
        names = {f.name for f in fields(cls)}
        values = {}
        for key, value in attrs.items():
            if key in names:
                value = value.item() if isinstance(value, np.generic) else value
                values[key] = json.loads(value) if key in _JSON_FIELDS and isinstance(value, str) else value
        return cls(**values)

    def to_attrs(self) -> dict:
        """What HDF5 stores: dicts and lists as JSON text, the rest as they are."""
        return {f.name: _encoded(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    def identity(self) -> dict:
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    @property
    def flip(self) -> bool:
        return FLIP_KEY in self.transform


IDENTITY_FIELDS = ("dataset", "dataset_fingerprint", "backbone", "weights", "weights_sha256", "layer", "pool",
                   "image_size", "precision", "transform", "versions")
_JSON_FIELDS = ("transform", "versions", "class_names", "layer_module", "layout")


def _encoded(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list | tuple) else value


def entry_name(info: CacheInfo) -> str:
    """Readable prefix (what a person looks for) plus a hash of every field that decides the features."""
    weights = info.weights
    if weights == "none":
        weights_slug = "random"
    elif "/" in weights:
        weights_slug = Path(weights).stem
    else:  # "ResNet18_Weights.IMAGENET1K_V1" -> IMAGENET1K_V1, "package:imagenet" -> imagenet, "timm:TAG" -> TAG
        weights_slug = weights.split(".")[-1].split(":")[-1]
    flip = "-flip" if info.flip else ""
    readable = (f"{info.dataset}__{name_in_paths(info.backbone)}__{weights_slug}__"
                f"{info.layer}-{info.pool}{flip}__{info.image_size}px")
    identity = json.dumps(info.identity(), sort_keys=True)
    return f"{readable}__{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def identity_changes(path: Path, info: CacheInfo) -> list[str]:
    """The identity fields of the entry at `path` that differ from `info` (why it is not reused); [] if it cannot
    be read."""
    try:
        with h5py.File(path, "r") as file:
            return _identity_changes_in(file, info)
    except OSError:
        return []


def _identity_changes_in(file: h5py.File, info: CacheInfo) -> list[str]:
    return [name for name in IDENTITY_FIELDS if file.attrs.get(name) != _encoded(getattr(info, name))]


@dataclass
class SplitRows:
    """What a split will hold, known before any feature is computed."""

    ids: list[str]
    labels: np.ndarray
    stamps: np.ndarray | None = None  # (size, mtime_ns) per image file, where the samples are files


class CacheWriter:
    """Writes features in chunks into `<entry>.h5.partial`, resumable; `finish()` makes the `.h5`."""

    def __init__(self, final_path: Path, info: CacheInfo, splits: dict[str, SplitRows], feature_dim: int):
        self.final_path = final_path
        self.partial_path = final_path.with_suffix(PARTIAL_SUFFIX)
        self.resumed = self._can_resume(info, splits, feature_dim)
        if not self.resumed:
            check_free_space(final_path.parent, _bytes_needed(splits, feature_dim))
        if self.resumed:
            self.file = h5py.File(self.partial_path, "a")
        else:
            self.file = h5py.File(self.partial_path, "w")
            self._create(info, splits, feature_dim)

    def _can_resume(self, info: CacheInfo, splits: dict[str, SplitRows], feature_dim: int) -> bool:
        if not self.partial_path.exists():
            return False
        try:
            with h5py.File(self.partial_path, "r") as old:
                same = not _identity_changes_in(old, info)
                same = same and CacheInfo.from_attrs(old.attrs).feature_dim == feature_dim
                return same and all(name in old and old[name].attrs["num_samples"] == len(rows.ids)
                                    for name, rows in splits.items())
        except (OSError, KeyError):
            return False  # a file torn by a kill mid-write: start it again

    def _create(self, info: CacheInfo, splits: dict[str, SplitRows], feature_dim: int) -> None:
        started = replace(info, format_version=FORMAT_VERSION, complete=False, feature_dim=feature_dim)
        self.file.attrs.update(started.to_attrs())
        for name, rows in splits.items():
            group = self.file.create_group(name)
            count = len(rows.ids)
            # all space allocated now, not chunk by chunk: a disk filling up later cannot fail a write midway
            # (HDF5 does not survive a failed write well)
            allocate_early = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            allocate_early.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            group.create_dataset("features", shape=(count, feature_dim), dtype="float32", dcpl=allocate_early,
                                 chunks=(max(1, min(count, max(1, (1 << 20) // (4 * feature_dim)))), feature_dim))
            group.create_dataset("labels", data=rows.labels.astype(np.int64))
            group.create_dataset("ids", data=np.asarray(rows.ids, dtype=object), dtype=h5py.string_dtype())
            if rows.stamps is not None:
                group.create_dataset("stamps", data=rows.stamps.astype(np.int64).reshape(-1, 2))
            group.attrs["num_samples"] = count
            group.attrs["rows_written"] = 0
            group.attrs["skipped"] = "[]"
        self.file.flush()

    def rows_written(self, split: str) -> int:
        return int(self.file[split].attrs["rows_written"])

    def write(self, split: str, start: int, features: np.ndarray, skipped: list[str] = ()) -> None:
        group = self.file[split]
        group["features"][start:start + len(features)] = features
        self.add_skipped(split, skipped)
        group.attrs["rows_written"] = start + len(features)
        self.file.flush()

    def add_skipped(self, split: str, skipped: list[str]) -> None:
        if skipped:
            group = self.file[split]
            group.attrs["skipped"] = json.dumps(json.loads(group.attrs["skipped"]) + list(skipped))

    def finish(self, **run_fields) -> Path:
        """Record the run's `CacheInfo` fields (extract_seconds, compiled, ...), mark the file complete, rename it."""
        info = CacheInfo.from_attrs(self.file.attrs)
        info = replace(info, **run_fields, complete=True, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.file.attrs.update(info.to_attrs())
        self.file.close()
        os.replace(self.partial_path, self.final_path)
        return self.final_path

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


class RowDonor:
    """A complete entry of the same request for an earlier state of the dataset, giving the rows of every image
    file it holds unchanged (same path, size and mtime, as the fingerprint judges them): after a few files are
    added, removed, relabelled or edited, only those are run through the network again."""

    COPY_ROWS = 4096

    def __init__(self, path: Path, splits: dict[str, SplitRows]):
        self.path = path
        self.file = h5py.File(path, "r")
        try:
            self.feature_dim = CacheInfo.from_attrs(self.file.attrs).feature_dim
            held = self._held_files()
        except (OSError, KeyError):
            self.file.close()
            raise
        self.sources = {name: [held.get((i, *stamp)) for i, stamp in zip(rows.ids, rows.stamps.tolist(), strict=True)]
                        if rows.stamps is not None else [None] * len(rows.ids) for name, rows in splits.items()}

    def _held_files(self) -> dict[tuple[str, int, int], tuple[str, int]]:
        """(id, size, mtime) -> (split, row) of every image file the entry read."""
        held = {}
        for name in self.file:
            group = self.file[name]
            if isinstance(group, h5py.Group) and "stamps" in group:
                ids, kept, _ = _kept_rows(group)
                stamps = group["stamps"][...].tolist()
                for row in np.flatnonzero(kept).tolist():
                    held[(ids[row], *stamps[row])] = (name, row)
        return held

    def held(self, split: str) -> np.ndarray:
        """Which rows of `split` this entry holds."""
        return np.asarray([source is not None for source in self.sources[split]], dtype=bool)

    def rows(self, split: str, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, features) of rows [start, stop) of `split`, every one of them held, a chunk at a time."""
        for first in range(start, stop, self.COPY_ROWS):
            sources = self.sources[split][first:min(stop, first + self.COPY_ROWS)]
            features = np.empty((len(sources), self.feature_dim), dtype=np.float32)
            for name in {name for name, _ in sources}:
                at = np.asarray([i for i, (n, _) in enumerate(sources) if n == name])
                rows = np.asarray([sources[i][1] for i in at])
                low, high = rows.min(), rows.max() + 1
                if high - low <= 2 * len(rows):  # one slice read, not a point selection per row
                    features[at] = self.file[name]["features"][low:high][rows - low]
                else:  # rows far apart (a table listed in another order): those rows alone, in file order
                    unique, where = np.unique(rows, return_inverse=True)
                    features[at] = self.file[name]["features"][unique][where]
            yield first, features

    def close(self) -> None:
        self.file.close()


def merge_parts(final_path: Path, info: CacheInfo, splits: dict[str, SplitRows], feature_dim: int, parts: list[Path],
                **run_fields) -> Path:
    """Join complete part files (each a run of consecutive rows of every split, in order) into one entry."""
    writer = CacheWriter(final_path, info, splits, feature_dim)
    try:
        for name in splits:
            row = 0
            for part in parts:
                with h5py.File(part, "r") as file:
                    group = file[name]
                    for start in range(0, len(group["features"]), 1 << 16):
                        features = group["features"][start:start + (1 << 16)]
                        writer.write(name, row, features)
                        row += len(features)
                    writer.add_skipped(name, json.loads(group.attrs["skipped"]))
            if row != len(splits[name].ids):
                raise RuntimeError(f"the parts hold {row} rows of {name}, the dataset {len(splits[name].ids)}")
        return writer.finish(**run_fields)
    finally:
        writer.close()


def _bytes_needed(splits: dict[str, SplitRows], feature_dim: int) -> int:
    """Features, labels and ids of every split, plus room for HDF5's own structures."""
    rows = sum(len(r.ids) for r in splits.values())
    ids = sum(len(i.encode()) + 16 for r in splits.values() for i in r.ids)
    return rows * (4 * feature_dim + 8) + ids + (1 << 20)


def _kept_rows(group: h5py.Group) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """A split's ids, the mask of rows whose image was read (not in `skipped`), and the skipped ids."""
    ids = group["ids"].asstr()[...]
    skipped = set(json.loads(group.attrs["skipped"]))
    return ids, np.asarray([i not in skipped for i in ids], dtype=bool), skipped


class FeatureCache:
    """A complete cache entry, read back: its `CacheInfo` and each split's features."""

    def __init__(self, path: Path, info: CacheInfo, splits: list[str]):
        self.path = path
        self.info = info
        self.splits = splits

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @property
    def layout(self) -> dict[str, tuple[int, int]]:
        """Layer name -> (first column, end column) in the features; a format-1 file holds one layer."""
        if self.info.layout is None:
            return {self.info.layer: (0, self.info.feature_dim)}
        return {name: (start, stop) for name, start, stop in self.info.layout}

    def describe(self) -> str:
        info = self.info
        return f"{info.backbone} ({info.weights}) {info.layer}-{info.pool} features of {info.dataset} at " \
               f"{info.image_size} px"

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, labels and ids of a split, without the rows of images that could not be read."""
        if split not in self.splits:
            raise UsageError(f"{self.path.name} has no {split!r} split (it has {', '.join(self.splits)})")
        with h5py.File(self.path, "r") as file:
            group = file[split]
            ids, keep, _ = _kept_rows(group)
            return group["features"][...][keep], group["labels"][...][keep], ids[keep]


def open_cache(path: str | os.PathLike) -> FeatureCache:
    """Open a complete cache entry; anything else (partial, foreign, older format) is a UsageError."""
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise UsageError(f"{path} is an unfinished extraction; rerun the extract command that made it to finish it")
    if not path.is_file():
        raise UsageError(f"cache file {path} does not exist; run `python -m extract BACKBONE DATASET` first")
    try:
        with h5py.File(path, "r") as file:
            attrs = dict(file.attrs)
            splits = [k for k in file if isinstance(file[k], h5py.Group)]
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise
        raise UsageError(f"{path} is not a readable HDF5 feature cache ({error}); extract it again") from None
    if "format_version" not in attrs:
        raise UsageError(f"{path} is an HDF5 file but not a feature cache (it has no format_version); give a file "
                         "that `python -m extract` wrote")
    info = CacheInfo.from_attrs(attrs)
    if info.format_version not in READABLE_FORMATS:
        raise UsageError(f"{path} was written in cache format {info.format_version}, this version "
                         f"reads {' and '.join(map(str, READABLE_FORMATS))}; rerun extract with --force to rebuild it")
    if not info.complete:
        raise UsageError(f"{path} is not marked complete; rerun the extract command that made it")
    return FeatureCache(path, info, splits)


def check_file(path: str | os.PathLike) -> list[tuple[str, bool, str]]:
    """Integrity checks of a cache file: (check, passed, detail) rows. Reads every feature once."""
    try:
        cache = open_cache(path)
    except UsageError as error:
        return [("readable, complete, known format", False, str(error))]
    rows = [("readable, complete, known format", True, f"format {cache.info.format_version}, {cache.describe()}")]
    classes = len(cache.class_names)
    with h5py.File(cache.path, "r") as file:
        for split in cache.splits:
            group = file[split]
            written, total = int(group.attrs["rows_written"]), int(group.attrs["num_samples"])
            rows.append((f"{split}: every row written", written == total == len(group["features"]),
                         f"{written} of {total}"))
            ids, keep, skipped = _kept_rows(group)
            finite = bool(np.isfinite(group["features"][...][keep]).all())
            rows.append((f"{split}: features finite", finite, f"{int(keep.sum())} rows, {len(skipped)} skipped"))
            labels = group["labels"][...]
            rows.append((f"{split}: labels within the {classes} classes",
                         bool(((labels >= 0) & (labels < classes)).all()), f"{len(np.unique(labels))} classes used"))
            rows.append((f"{split}: sample ids unique", len(set(ids)) == len(ids), f"{len(ids)} ids"))
    return rows


def latest_cache(cache_dir: str | os.PathLike) -> Path:
    """The most recently written complete entry in a cache folder."""
    entries = sorted(Path(cache_dir).glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
    if not entries:
        raise UsageError(f"no feature cache in {cache_dir}/; run `python -m extract BACKBONE DATASET` first "
                         "or pass a cache file")
    return entries[-1]
