"""Frozen pretrained backbones, dataset resolution, feature extraction and the HDF5 feature cache."""

from extract.backbones import Backbone, create_backbone, list_backbones
from extract.datasets import resolve_dataset
from extract.errors import UsageError
from extract.store import FeatureCache, open_cache

__all__ = [
    "Backbone",
    "FeatureCache",
    "UsageError",
    "create_backbone",
    "list_backbones",
    "open_cache",
    "resolve_dataset",
]
