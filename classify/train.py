"""Fit a head on a cache entry's train split by GridSearchCV, evaluate once on its test split, save it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

from classify import heads
from classify.evaluate import evaluate, plot_confusion
from classify.heads import build_head, parse_grid, rbf_gamma, svm_is_approximate
from classify.models import save_model
from extract.errors import UsageError
from extract.store import open_cache


@dataclass
class TrainResult:
    head: str
    cache_file: str
    estimator: str
    best_params: dict
    cv_accuracy: float
    cv_scores: list[dict]
    test_accuracy: float
    macro_f1: float
    n_train: int
    n_test: int
    feature_dim: int
    search_seconds: float
    model_file: str
    confusion_png: str
    class_names: list[str] = field(repr=False)
    report: str = field(repr=False)
    confusion: list[list[int]] = field(repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def check_cv(cv: int, labels: np.ndarray) -> None:
    present = np.bincount(labels)
    smallest = int(present[present > 0].min()) if present.any() else 0
    if cv < 2:
        raise UsageError(f"--cv must be 2 or more, not {cv}")
    if cv > smallest:
        raise UsageError(f"--cv {cv} is more than the {smallest} training images of the smallest class; "
                         f"use --cv {max(2, smallest)} or fewer folds")


def train_head(cache_path: str | Path, head: str, grid_text: str | None = None, cv: int = 3, n_jobs: int = -1,
               exact: bool = False, approx: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    cache = open_cache(cache_path)
    grid = parse_grid(grid_text, head)
    x_train, y_train, _ = cache.load("train")
    x_test, y_test, _ = cache.load("test")
    if head != "svm" and (exact or approx):
        raise UsageError("--exact and --approx choose how the svm head is fitted; the linear heads have one way")
    approximate = head == "svm" and svm_is_approximate(len(y_train), exact, approx)
    search_x, search_y = x_train, y_train
    subsampled = approximate and len(y_train) > heads.EXACT_SVM_MAX_TRAIN
    if subsampled:
        search_x, _, search_y, _ = train_test_split(x_train, y_train, train_size=heads.EXACT_SVM_MAX_TRAIN,
                                                    stratify=y_train, random_state=0)
    check_cv(cv, search_y)
    # PCA inside each fold cannot keep more components than that fold has samples
    components = min(heads.PCA_COMPONENTS, x_train.shape[1], len(search_y) - len(search_y) // cv - 1)
    estimator = build_head(head, approximate, rbf_gamma(x_train), components) if head == "svm" else build_head(head)
    if approximate:
        log(f"svm: {len(y_train)} train samples (the exact SVC is slow above {heads.EXACT_SVM_MAX_TRAIN}): RBF SVC "
            f"on a {components}-d PCA projection, C searched on {len(search_y)} samples, then one fit on all "
            "(--exact forces the exact SVC)")
    combos = int(np.prod([len(v) for v in grid.values()]))
    log(f"{head}: GridSearchCV over {dict((k.removeprefix('clf__'), v) for k, v in grid.items())}, "
        f"{cv}-fold on {len(search_y)} train samples x {x_train.shape[1]} features ({combos * cv} fits + 1)")
    search = GridSearchCV(estimator, grid, cv=StratifiedKFold(cv, shuffle=True, random_state=0),
                          n_jobs=n_jobs, refit=not subsampled, error_score="raise")
    started = time.perf_counter()
    search.fit(search_x, search_y)
    model = search.best_estimator_ if not subsampled else clone(estimator).set_params(
        **search.best_params_).fit(x_train, y_train)
    seconds = time.perf_counter() - started  # the whole training: search, and the refit on all samples
    evaluation = evaluate(y_test, model.predict(x_test), cache.class_names)

    base = cache.path.with_suffix("")
    model_path = Path(f"{base}.{head}.joblib")
    png = plot_confusion(evaluation.confusion, cache.class_names, Path(f"{base}.{head}.confusion.png"),
                         f"{head} on {cache.attrs['backbone']} features: test accuracy {evaluation.accuracy:.3f}")
    cv_scores = [{"params": {k.removeprefix("clf__"): v for k, v in params.items()}, "mean_cv_accuracy": float(m)}
                 for params, m in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                                      strict=True)]
    result = TrainResult(
        head=head, cache_file=str(cache.path), estimator=" -> ".join(repr(step) for _, step in model.steps),
        best_params={k.removeprefix("clf__"): v for k, v in search.best_params_.items()},
        cv_accuracy=float(search.best_score_), cv_scores=cv_scores, test_accuracy=evaluation.accuracy,
        macro_f1=evaluation.macro_f1, n_train=len(y_train), n_test=len(y_test), feature_dim=int(x_train.shape[1]),
        search_seconds=seconds, model_file=str(model_path), confusion_png=str(png), class_names=cache.class_names,
        report=evaluation.report,
        confusion=evaluation.confusion.tolist())
    provenance = {k: cache.attrs[k] for k in ("backbone", "weights", "weights_sha256", "layer", "pool", "image_size",
                                              "precision", "dataset", "dataset_fingerprint", "transform")}
    save_model(model, model_path, {**result.to_dict(), "provenance": provenance})
    return result
