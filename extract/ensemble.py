"""Several cache entries of one dataset read as one: an ensemble of backbones (or input sizes, layers, `--flip`).

Each member stays its own cache entry, extracted once and reused by every ensemble it joins. Reading them together
matches their rows by image id, so entries whose rows come in other orders join correctly, and entries of other
images, labels or splits are refused. The joined features are the members' columns side by side; `layout` names
each member's layers `MEMBER/LAYER`, and `layer_key` turns a layer as users name it (`penultimate`, `stage4+
penultimate`) into the same layer of every member.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from extract.errors import UsageError
from extract.store import CacheInfo, FeatureCache, open_cache

MEMBER_SEPARATOR = "/"  # between a member's label and its layer in an ensemble's layout


class EnsembleCache:
    """Cache entries of the same images read as one: `load(split)` gives the members' features side by side, in
    the first member's row order. `path` names the ensemble (no file is there: the heads' files go beside it)."""

    def __init__(self, members: list[FeatureCache]):
        self.members = members
        self.labels = member_labels([member.info for member in members])
        first = members[0]
        self.info: CacheInfo = replace(first.info, backbone="+".join(self.labels))
        digest = hashlib.sha256("\n".join(m.path.name for m in members).encode()).hexdigest()[:10]
        self.path = first.path.parent / f"{first.info.dataset}__ensemble-{len(members)}__{digest}.h5"
        self.splits = first.splits

    @property
    def class_names(self) -> list[str]:
        return self.members[0].class_names

    @property
    def layout(self) -> dict[str, tuple[int, int]]:
        """MEMBER/LAYER -> (first column, end column) of the joined features."""
        layout, offset = {}, 0
        for label, member in zip(self.labels, self.members, strict=True):
            for name, (start, stop) in member.layout.items():
                layout[f"{label}{MEMBER_SEPARATOR}{name}"] = (offset + start, offset + stop)
            offset += member.info.feature_dim
        return layout

    @property
    def member_layout(self) -> dict[str, tuple[int, int]]:
        """The layers every member holds, as the first member lays them out: what `--layers` may name."""
        common = [name for name in self.members[0].layout if all(name in m.layout for m in self.members[1:])]
        return {name: self.members[0].layout[name] for name in common}

    def layer_key(self, layer: str) -> str:
        """'stage4+penultimate' -> every member's stage4 and penultimate, joined by '+' as `LayerSelector` reads."""
        return "+".join(f"{label}{MEMBER_SEPARATOR}{name}" for label in self.labels for name in layer.split("+"))

    def describe(self) -> str:
        return "ensemble of " + ", ".join(member.describe() for member in self.members)

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The members' features side by side, each member's rows put in the first member's order by image id."""
        features, labels, ids = self.members[0].load(split)
        blocks = [features]
        for member in self.members[1:]:
            other, other_labels, other_ids = member.load(split)
            order = _rows_matching(ids, other_ids, self.members[0].path, member.path, split)
            if not np.array_equal(other_labels[order], labels):
                raise UsageError(f"{member.path.name} labels the {split} images otherwise than "
                                 f"{self.members[0].path.name}; extract every member from the same dataset")
            blocks.append(other[order])
        return np.hstack(blocks), labels, ids


def member_labels(infos: Sequence[CacheInfo]) -> list[str]:
    """Short names of the members: the backbone, and where members share one, what tells them apart (input size,
    pooling, mirror averaging, weights); numbered where nothing does."""
    labels = []
    for info in infos:
        same = [other for other in infos if other.backbone == info.backbone]
        apart = {"image_size": f"{info.image_size}px", "pool": info.pool, "flip": "flip" if info.flip else "noflip",
                 "weights": str(info.weights).replace("/", "-")}
        labels.append("-".join([info.backbone.replace("/", "-"), *(text for name, text in apart.items()
                                                                    if len({getattr(o, name) for o in same}) > 1)]))
    return [f"{label}-{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def open_ensemble(paths: Sequence[str | os.PathLike]) -> EnsembleCache:
    """Open cache entries of the same dataset as one. Entries of other images, labels, splits or classes, or the
    same entry twice, are a UsageError."""
    if len(paths) < 2:
        raise UsageError("an ensemble needs two or more cache entries")
    members = [open_cache(path) for path in paths]
    names = [member.path.resolve() for member in members]
    twice = sorted({path.name for path in names if names.count(path) > 1})
    if twice:
        raise UsageError(f"{twice[0]} is given twice; give each cache entry once")
    first = members[0]
    for member in members[1:]:
        differs = _mismatch(first, member)
        if differs:
            raise UsageError(f"{member.path.name} and {first.path.name} are not of the same images ({differs}); "
                             "extract every member from the same dataset with the same --limit-per-class")
    return EnsembleCache(members)


def open_features(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> FeatureCache | EnsembleCache:
    """One cache entry, or several read as an ensemble."""
    if isinstance(paths, str | os.PathLike):
        return open_cache(paths)
    return open_cache(paths[0]) if len(paths) == 1 else open_ensemble(paths)


def _mismatch(first: FeatureCache, other: FeatureCache) -> str | None:
    if other.info.dataset_fingerprint != first.info.dataset_fingerprint:
        return f"dataset {other.info.dataset!r} fingerprint {other.info.dataset_fingerprint[:10]} against " \
               f"{first.info.dataset!r} {first.info.dataset_fingerprint[:10]}"
    if other.class_names != first.class_names:
        return "their class names differ"
    if sorted(other.splits) != sorted(first.splits):
        return f"splits {', '.join(other.splits)} against {', '.join(first.splits)}"
    return None


def _rows_matching(ids: np.ndarray, other_ids: np.ndarray, path: Path, other_path: Path, split: str) -> np.ndarray:
    """The rows of `other_ids` in the order of `ids`; the two must hold the same ids."""
    position = {image_id: row for row, image_id in enumerate(other_ids)}
    missing = [image_id for image_id in ids if image_id not in position]
    if missing or len(other_ids) != len(ids):
        example = missing[0] if missing else next(i for i in other_ids if i not in set(ids))
        raise UsageError(f"{other_path.name} and {path.name} hold different {split} images (for example "
                         f"{example!r}); extract every member from the same dataset, with the same --skip-bad")
    return np.fromiter((position[image_id] for image_id in ids), dtype=np.int64, count=len(ids))
