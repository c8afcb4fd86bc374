"""Train images whose label the features disagree with: the likeliest labelling mistakes, to look at first.

Each train image is predicted by a logistic regression that never saw it (the cross-validation fold it sits out of),
with C chosen by the same search the logreg head runs. An image whose out-of-fold prediction is another class than
its label is a suspect; suspects are ranked by how little probability their own label got (cleanlab's "predicted is
not the given label" filter with self-confidence ranking). Most suspects on a hard dataset are honest confusions,
not wrong labels: the ranking puts the ones the features are surest about first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

from classify.cluster import fits_bar
from classify.conventions import check_cv, default_layer, output_base, short_name
from classify.heads import LayerSelector, build_head, parse_grid
from classify.mistakes import cached_image_files, plot_images, write_table
from extract.store import open_cache

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


@dataclass
class Suspects:
    rows: np.ndarray  # train rows whose out-of-fold prediction is not their label, least probable label first
    class_names: list[str]
    ids: np.ndarray  # of every train row
    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray  # out-of-fold, (n_train, n_classes)
    best_params: dict
    seconds: float
    csv_path: Path
    png_path: Path | None


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, layout: dict, layer: str, cv: int,
                              n_jobs: int, progress: bool = False, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Each row's class probabilities from a logreg head trained on the other folds, and the parameters chosen;
    `progress`: a bar over the search's fits."""
    estimator = build_head("logreg", layout, layer)
    folds = StratifiedKFold(cv, shuffle=True, random_state=seed)
    grid = parse_grid(None, "logreg")
    search = GridSearchCV(estimator, grid, cv=folds, n_jobs=n_jobs, refit=False)
    with fits_bar(cv * int(np.prod([len(values) for values in grid.values()])), "suspects", progress):
        search.fit(features, labels)
    best = clone(estimator).set_params(**search.best_params_)
    probabilities = cross_val_predict(best, features, labels, cv=folds, method="predict_proba", n_jobs=n_jobs)
    return probabilities, {short_name(k): v for k, v in search.best_params_.items()}


def rank_suspects(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Rows predicted as another class than their label, the one whose label got the least probability first."""
    predicted = probabilities.argmax(axis=1)
    own = probabilities[np.arange(len(labels)), labels]
    suspects = np.flatnonzero(predicted != labels)
    return suspects[np.argsort(own[suspects], kind="stable")]


def find_suspects(cache_path: str | Path, layer: str | None = None, cv: int = 3, n_jobs: int = -1,
                  log: Callable[[str], None] = _logger.info, progress: bool = False, seed: int = 0) -> Suspects:
    """Rank the cache's train images by how much the features disagree with their labels; write FILE.suspects.csv
    (every suspect) and, for image folders and tables, FILE.suspects.png (the first GALLERY_SIZE). `progress`: a
    bar over the search's fits on stderr; `seed` shuffles the folds."""
    cache = open_cache(cache_path)
    features, labels, ids = cache.load("train")
    check_cv(cv, labels)
    chosen = layer or default_layer(cache.layout)
    LayerSelector(cache.layout, chosen).fit(features[:2])  # an unknown --layers fails here, before any work
    log(f"suspects: out-of-fold logreg probabilities of {len(labels)} train images, {cv} folds, {chosen} features")
    started = time.perf_counter()
    found, best_params = out_of_fold_probabilities(features, labels, cache.layout, chosen, cv, n_jobs, progress, seed)
    probabilities = np.zeros((len(labels), len(cache.class_names)))
    probabilities[:, np.unique(labels)] = found  # a class without train images has no column of its own
    rows = rank_suspects(labels, probabilities)
    predicted = probabilities.argmax(axis=1)
    base = output_base(cache.path, layer)
    names = cache.class_names
    csv_path = write_table(Path(f"{base}.suspects.csv"),
                           ["id", "label", "predicted", "probability_of_label", "probability_of_predicted"],
                           ([ids[row], names[labels[row]], names[predicted[row]],
                             f"{probabilities[row, labels[row]]:.4f}", f"{probabilities[row, predicted[row]]:.4f}"]
                            for row in rows))
    shown = cached_image_files(cache.info.dataset_source, ids, rows)
    png_path = None
    if shown:
        captions = [f"labelled {names[labels[r]]} {probabilities[r, labels[r]]:.2f}\nlooks like "
                    f"{names[predicted[r]]} {probabilities[r, predicted[r]]:.2f}\n{file.name}" for r, file in shown]
        png_path = plot_images([file for _, file in shown], captions, Path(f"{base}.suspects.png"),
                               f"the {len(shown)} train images (of {len(labels)}) whose label the features disagree "
                               f"with most, of {len(rows)} suspects\nout-of-fold logreg on "
                               f"{cache.info.backbone} features; the numbers: the probability of each class")
    return Suspects(rows, names, ids, labels, predicted, probabilities, best_params, time.perf_counter() - started,
                    csv_path, png_path)
