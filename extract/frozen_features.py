"""`FrozenFeatures`: a frozen pretrained backbone as a scikit-learn transformer, images in, pooled features out, so
that GridSearchCV can sweep the features' own settings (backbone, layers, pooling, input size, mirror averaging)
beside the head's.

    search = GridSearchCV(Pipeline([("features", FrozenFeatures(cache_dir="cache")),
                                    ("scale", StandardScaler()), ("clf", LogisticRegression())]),
                          {"features__pool": ["avg", "max"], "features__layers": ["stage4", "penultimate"],
                           "clf__C": [0.01, 0.1]}, cv=3)
    search.fit(image_paths, labels)

With `cache_dir`, each image's features are computed once per setting and kept (`image_store`): the search above
runs the network once per setting and image, not once per fold and candidate, and the same search run again runs it
on no image at all.

The networks of the last two settings stay in memory for the next fit of the same setting, after the estimators that
built them are gone: `FrozenFeatures.free_networks()` lets them go.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from extract.backbones import DEFAULT_BACKBONE, create_backbone
from extract.datasets import BadImageError, to_rgb
from extract.features import ExtractionSettings, Extractor
from extract.image_store import ImageFeatureStore
from extract.layers import DEFAULT_LAYER
from extract.run import extraction_info

ImageLike = str | os.PathLike | Image.Image | np.ndarray
FEATURE_PARAMS = ("backbone", "weights", "layers", "pool", "image_size", "flip", "precision")


class FrozenFeatures(TransformerMixin, BaseEstimator):
    """Images to the features of a frozen pretrained backbone: float32, one row per image.

    Parameters are those of `python -m extract` (`--layers`, `--pool`, `--image-size`, `--flip`, `--precision`,
    `--batch-size`, `--device`); `cache_dir` None keeps nothing on disk.

    `X` is a sequence of images: file paths (str or Path; decoded upright, as a dataset's files are), PIL images of
    any mode, or uint8 arrays (H, W, 3); a uint8 array (N, H, W, 3) is N images. `fit` builds the network and learns
    nothing from X; the network is never pickled (`clone`, `pickle`, `joblib` and GridSearchCV's worker processes
    get the parameters and the layout), and a loaded transformer builds it again when it next transforms.

    Errors: `extract.datasets.BadImageError` names an image that cannot be read; `ValueError`, input that is no
    sequence of images; `extract.UsageError`, a parameter the backbone does not take.

    scikit-learn's estimator checks that apply pass: clone, get/set_params round trip, pickling, NotFittedError
    before fit. Those that feed random 2-D float arrays (dtype, shape and NaN checks, fit idempotence on numbers)
    do not apply: its input is images, not a numeric matrix.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | None = None, layers: str = DEFAULT_LAYER,
                 pool: str = "avg", image_size: int | None = None, flip: bool = False, precision: str = "fp32",
                 batch_size: int | None = None, device: str = "auto", cache_dir: str | os.PathLike | None = None):
        self.backbone = backbone
        self.weights = weights
        self.layers = layers
        self.pool = pool
        self.image_size = image_size
        self.flip = flip
        self.precision = precision
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = cache_dir

    def fit(self, X: Sequence[ImageLike], y=None) -> FrozenFeatures:  # noqa: N803 - scikit-learn's names
        """Build the network; X is not looked at (a frozen backbone learns nothing)."""
        extractor = self._build()
        self.layout_ = [tuple(entry) for entry in extractor.layout]
        self.n_features_out_ = extractor.feature_dim()
        self.identity_ = replace(extraction_info(extractor.backbone, extractor, self.pool), dataset="images")
        self.fitted_params_ = self._feature_params()
        return self

    def transform(self, X: Sequence[ImageLike]) -> np.ndarray:  # noqa: N803
        check_is_fitted(self, "layout_")
        now = self._feature_params()
        changed = [f"{name}: {was!r} -> {now[name]!r}" for name, was in self.fitted_params_.items() if now[name] != was]
        if changed:  # the store is keyed by identity_: features of other settings must never be written under it
            raise ValueError(f"the features' parameters changed since fit ({', '.join(changed)}); call fit again")
        images = _as_images(X)
        keys = [_image_key(image) for image in images]
        store = ImageFeatureStore(self.cache_dir, self.identity_, self.n_features_out_) if self.cache_dir else None
        known = store.read(keys) if store else {}
        todo = list(dict.fromkeys(key for key in keys if key not in known))  # each new image once, in order
        if todo:
            first = {key: index for index, key in reversed(list(enumerate(keys)))}
            computed = self._network().image_features([_decodable(images[first[key]]) for key in todo])
            known.update(zip(todo, computed, strict=True))
            if store:
                store.append(todo, computed)
        if not keys:
            return np.empty((0, self.n_features_out_), dtype=np.float32)
        return np.stack([known[key] for key in keys]).astype(np.float32, copy=False)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "layout_")
        return np.asarray([f"{layer}_{column - start}" for layer, start, stop in self.layout_
                           for column in range(start, stop)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_extractor", None)  # the network stays in the process that built it
        return state

    def _feature_params(self) -> dict:
        """The parameters that decide the features (not where or how fast they are computed)."""
        return {name: getattr(self, name) for name in FEATURE_PARAMS}

    def _build(self) -> Extractor:
        self._extractor = _extractor_for(self.backbone, self.weights, self.layers, self.pool, self.image_size,
                                         self.flip, self.precision, self.batch_size, self.device)
        return self._extractor

    def _network(self) -> Extractor:
        return self.__dict__.get("_extractor") or self._build()

    @staticmethod
    def free_networks() -> None:
        """Drop the networks kept for the next fit of the same setting; an estimator still holding one keeps it."""
        _extractor_for.cache_clear()


@functools.lru_cache(maxsize=2)
def _extractor_for(backbone: str, weights: str | None, layers: str, pool: str, image_size: int | None, flip: bool,
                   precision: str, batch_size: int | None, device: str) -> Extractor:
    """The network of one setting, kept for the next fit of the same setting in this process (a search fits each
    candidate once per fold)."""
    settings = ExtractionSettings(batch_size=batch_size, device=device, precision=precision, compile="off")
    return Extractor(create_backbone(backbone, weights, image_size), pool, settings, layers, flip)


def _as_images(X) -> list:  # noqa: N803
    if isinstance(X, np.ndarray) and X.dtype == np.uint8:
        if X.ndim == 3:
            raise ValueError("X is one uint8 image; pass a sequence of images, e.g. [image]")
        if X.ndim != 4 or X.shape[-1] != 3:
            raise ValueError(f"a uint8 array X must be (N, H, W, 3) images, not of shape {X.shape}")
        return list(X)
    if isinstance(X, str | os.PathLike | Image.Image) or not isinstance(X, Sequence | np.ndarray):
        raise ValueError(f"X must be a sequence of images (paths, PIL images or uint8 arrays), not {type(X).__name__}")
    images = list(X)
    for image in images:
        if isinstance(image, np.ndarray) and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3):
            raise ValueError(f"an image array must be uint8 (H, W, 3), not {image.dtype} of shape {image.shape}")
        if not isinstance(image, str | os.PathLike | Image.Image | np.ndarray):
            raise ValueError(f"an image must be a path, a PIL image or a uint8 array, not {type(image).__name__}")
    return images


def _image_key(image: ImageLike) -> str:
    """A file by its path, size and modification time (as the dataset cache keys files); an image in memory by a
    hash of its RGB pixels."""
    if isinstance(image, str | os.PathLike):
        path = Path(image).resolve()
        try:
            stat = path.stat()
        except OSError as error:
            raise BadImageError(str(image), error.strerror or str(error)) from None
        return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    rgb = _decodable(image)
    digest = hashlib.sha256(f"{rgb.size}".encode())
    digest.update(rgb.tobytes())
    return f"pixels:{digest.hexdigest()}"


def _decodable(image: ImageLike) -> str | os.PathLike | Image.Image:
    """What `Extractor.image_features` takes: a path, or an RGB PIL image."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    return to_rgb(image) if isinstance(image, Image.Image) else image
