"""The per-image feature store behind `FrozenFeatures`: one HDF5 file per extraction setting under
`CACHE_DIR/images/`, its rows keyed by each image's identity, appended under a lock.

Layout of one file (named by `entry_name` of its `CacheInfo`, whose identity fields say what the features are):

    /          attrs: the fields of `CacheInfo` (dataset "images": no dataset behind it)
    /keys      UTF-8 strings (N,): `file:PATH:SIZE:MTIME_NS` for an image file, `pixels:SHA256` for one in memory
    /features  float32 (N, D), grown as images come

Several processes of one search (GridSearchCV's workers) share a file: every read and append holds its lock, and a
key already written by another process is not written again.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from filelock import FileLock

from extract.errors import make_folder
from extract.store import SUFFIX, CacheInfo, entry_name

FOLDER = "images"
LOCK_TIMEOUT_S = 3600  # a writer holds the lock only while it reads or appends rows


class ImageFeatureStore:
    def __init__(self, cache_dir: str | Path, info: CacheInfo, feature_dim: int):
        folder = make_folder(Path(cache_dir) / FOLDER, "cache_dir")
        self.path = folder / f"{entry_name(info)}{SUFFIX}"
        self.info, self.feature_dim = info, feature_dim
        self.lock = FileLock(self.path.with_suffix(".lock"), timeout=LOCK_TIMEOUT_S)

    def read(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The stored features of those of `keys` the file holds."""
        if not self.path.exists():
            return {}
        with self.lock, h5py.File(self.path, "r") as file:
            stored = file["keys"].asstr()[...]
            row_of = {key: row for row, key in enumerate(stored)}
            rows = sorted({row_of[key] for key in keys if key in row_of})
            if not rows:
                return {}
            features = file["features"][rows]
        return {stored[row]: vector for row, vector in zip(rows, features, strict=True)}

    def append(self, keys: list[str], features: np.ndarray) -> None:
        """Add the rows of keys the file does not hold yet (another process may have written some meanwhile)."""
        with self.lock, h5py.File(self.path, "a") as file:
            if "keys" not in file:
                file.attrs.update(self.info.to_attrs())
                file.attrs.update(complete=True, feature_dim=self.feature_dim)
                file.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
                file.create_dataset("features", shape=(0, self.feature_dim), maxshape=(None, self.feature_dim),
                                    dtype="float32", chunks=(max(1, (1 << 18) // (4 * self.feature_dim)),
                                                             self.feature_dim))
            held = set(file["keys"].asstr()[...])
            new = [i for i, key in enumerate(keys) if key not in held]
            if not new:
                return
            start = len(file["keys"])
            file["keys"].resize((start + len(new),))
            file["features"].resize((start + len(new), self.feature_dim))
            file["keys"][start:] = np.asarray([keys[i] for i in new], dtype=object)
            file["features"][start:] = features[new]
