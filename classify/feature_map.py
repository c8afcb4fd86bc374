"""A picture of a feature cache: its train images placed in 2-D by t-SNE, coloured by class.

Before any head is trained it shows whether the backbone's features already group the classes (tight, separate
islands: a linear head will do; one mixed cloud: try another layer, backbone or fine-tuning) and which classes
mingle. t-SNE keeps neighbours together but not distances between groups, so it is for looking, not measuring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from classify.conventions import default_layer
from classify.heads import LayerSelector
from extract.errors import UsageError
from extract.store import open_cache

DEFAULT_SAMPLES = 2000  # t-SNE of 2,000 images: 6.4 s on 2 cores
MIN_SAMPLES = 10
LABELLED_MAX_CLASSES = 40  # class names written on the map up to this many classes

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


def embed(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 2) t-SNE coordinates, after PCA to 50 dimensions (the usual first step: faster, and less noise)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    reduced = PCA(min(50, *features.shape), random_state=seed).fit_transform(features.astype(np.float64))
    perplexity = min(30.0, (len(features) - 1) / 3)  # t-SNE needs it below the number of points
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def plot_feature_map(coords: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """The points coloured by class, each class's name at the middle of its points."""
    import matplotlib
    from matplotlib.figure import Figure  # not pyplot: a library leaves the caller's backend and figures alone

    n = len(class_names)
    if n <= 20:  # distinct colours
        shade = matplotlib.colormaps["tab10" if n <= 10 else "tab20"](np.arange(n))
    else:  # neighbouring classes get neighbouring colours; the names tell them apart
        shade = matplotlib.colormaps["turbo"](np.linspace(0, 1, n))
    fig = Figure(figsize=(9, 9))
    ax = fig.subplots()
    ax.scatter(coords[:, 0], coords[:, 1], c=shade[labels], s=6, alpha=0.7, linewidths=0)
    if n <= LABELLED_MAX_CLASSES:
        for label in np.unique(labels):
            x, y = np.median(coords[labels == label], axis=0)
            ax.text(x, y, class_names[label], ha="center", va="center", fontsize=9, weight="bold",
                    bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "alpha": 0.8,
                          "edgecolor": shade[label], "linewidth": 2.5})
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def feature_map(cache_path: str | Path, layer: str | None = None, samples: int = DEFAULT_SAMPLES,
                log: Callable[[str], None] = _logger.info, seed: int = 0) -> Path:
    """t-SNE map of up to `samples` train images of a cache (drawn at random by `seed`, the same on every run),
    written beside the cache as FILE[.LAYER].map.png."""
    if samples < MIN_SAMPLES:
        raise UsageError(f"--samples {samples} is too few to map; give {MIN_SAMPLES} or more")
    cache = open_cache(cache_path)
    selector = LayerSelector(cache.layout, layer or default_layer(cache.layout))
    features, labels, _ = cache.load("train")
    picked = np.sort(np.random.default_rng(seed).permutation(len(labels))[:samples])
    features, labels = features[picked], labels[picked]
    features = selector.fit(features).transform(features)
    log(f"t-SNE of {len(labels)} train images x {features.shape[1]} {selector.layer} features")
    base = cache.path.with_suffix("")
    path = Path(f"{base}.{layer}.map.png" if layer else f"{base}.map.png")
    title = (f"{cache.info.backbone} {selector.layer} features of {cache.info.dataset}: "
             f"{len(labels)} train images, t-SNE")
    return plot_feature_map(embed(features, seed), labels, cache.class_names, path, title)
