"""Frozen pretrained backbones, dataset resolution, feature extraction and the HDF5 feature cache.

The public API (anything else may change):

    from extract import extract, open_cache, FrozenFeatures
    result = extract("efficientnet_lite0", "examples/cifar10-mini")      # python -m extract, from Python
    x_train, y_train, ids = open_cache(result.path).load("train")        # the cached features
    features = FrozenFeatures(cache_dir="cache").fit_transform(paths)     # images -> features, in any sklearn Pipeline

- `extract(backbone, dataset, **options)` -> `ExtractResult`: the cache entry (`.path`), computed once.
- `open_cache(path)` -> `FeatureCache`: `.load(split)`, `.class_names`, `.layout`, `.info` (a `CacheInfo`).
- `open_ensemble([path, ...])` -> `EnsembleCache`: several entries of the same images, `.load(split)` side by side.
- `FrozenFeatures`: a scikit-learn transformer, images to features, for GridSearchCV over backbones, layers, pooling.
- `create_backbone(name, weights, image_size)` -> `Backbone`; `list_backbones()`.
- `Extractor(backbone, pool, ExtractionSettings(...))`: `.image_features(images)` without any cache.
- `resolve_dataset(spec)` -> `Dataset`: the splits a folder, a table or a name resolves to.
- Errors: `UsageError` (bad input, the message says what to do; a `ValueError`), `BadImageError` (an image that
  cannot be read).

The names are imported on first use (PEP 562), so that a module needing only the cache, such as `classify` training
on it, does not import torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from extract.lazy import lazy_exports

try:
    __version__ = version("transferkit")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

_HOME = {
    "extract": "extract.run",
    "ExtractResult": "extract.run",
    "open_cache": "extract.store",
    "FeatureCache": "extract.store",
    "CacheInfo": "extract.store",
    "FrozenFeatures": "extract.frozen_features",
    "open_ensemble": "extract.ensemble",
    "EnsembleCache": "extract.ensemble",
    "Backbone": "extract.backbones",
    "create_backbone": "extract.backbones",
    "list_backbones": "extract.backbones",
    "Extractor": "extract.features",
    "ExtractionSettings": "extract.features",
    "Dataset": "extract.datasets",
    "resolve_dataset": "extract.datasets",
    "BadImageError": "extract.datasets",
    "UsageError": "extract.errors",
}
__all__ = ["__version__", "extract", "ExtractResult", "open_cache", "FeatureCache", "CacheInfo", "FrozenFeatures",
           "open_ensemble", "EnsembleCache",
           "Backbone", "create_backbone", "list_backbones", "Extractor", "ExtractionSettings", "Dataset",
           "resolve_dataset", "BadImageError", "UsageError"]

if TYPE_CHECKING:
    from extract.backbones import Backbone, create_backbone, list_backbones
    from extract.datasets import BadImageError, Dataset, resolve_dataset
    from extract.ensemble import EnsembleCache, open_ensemble
    from extract.errors import UsageError
    from extract.features import ExtractionSettings, Extractor
    from extract.frozen_features import FrozenFeatures
    from extract.run import ExtractResult, extract
    from extract.store import CacheInfo, FeatureCache, open_cache


__getattr__, __dir__ = lazy_exports(__name__, _HOME, __all__)
