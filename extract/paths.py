"""File names and digests that the backbone registry, the feature store and the saved heads share.

Free of torch, so that `python -m classify` on a cache starts without importing it (1 s instead of 4)."""

from __future__ import annotations

import hashlib
import os


def name_in_paths(name: str) -> str:
    """A backbone name as one part of a file or folder name: timm/ARCH.TAG -> timm-ARCH.TAG."""
    return name.replace("/", "-")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
