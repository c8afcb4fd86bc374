"""Frozen pretrained backbones, dataset resolution, feature extraction and the HDF5 feature cache.

The names below are imported on first use (PEP 562), so that a module needing only the cache, such as
`classify` training on it, does not import torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOME = {
    "Backbone": "extract.backbones",
    "create_backbone": "extract.backbones",
    "list_backbones": "extract.backbones",
    "resolve_dataset": "extract.datasets",
    "UsageError": "extract.errors",
    "FeatureCache": "extract.store",
    "open_cache": "extract.store",
}
__all__ = [
    "Backbone",
    "FeatureCache",
    "UsageError",
    "create_backbone",
    "list_backbones",
    "open_cache",
    "resolve_dataset",
]

if TYPE_CHECKING:
    from extract.backbones import Backbone, create_backbone, list_backbones
    from extract.datasets import resolve_dataset
    from extract.errors import UsageError
    from extract.store import FeatureCache, open_cache


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module 'extract' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


def __dir__() -> list[str]:
    return __all__
