"""Fit a head on a cache entry's train split by GridSearchCV, evaluate once on its test split, save it."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from joblib import effective_n_jobs
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold

from classify import heads
from classify.cluster import fits_bar, sweep_backend
from classify.conventions import check_cv, default_layer, imbalance_note, output_base, short_name
from classify.evaluate import evaluate, plot_confusion
from classify.heads import build_head, format_grid, is_number, parse_grid, svm_is_pairwise, with_probabilities
from classify.mistakes import save_test_predictions
from classify.models import save_model
from classify.pairwise_svm import available_memory, fit_memory_bytes
from extract.ensemble import EnsembleCache, open_features
from extract.errors import UsageError

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


@dataclass
class TrainResult:
    head: str
    cache_file: str  # for an ensemble, the name its files go by (no file is there); `members` are its entries
    estimator: str
    best_params: dict
    layer: str
    scoring: str  # what the search chose by, and cv_accuracy is: 'accuracy', or 'balanced_accuracy' (--balanced)
    cv_accuracy: float
    cv_scores: list[dict]
    layer_scores: dict[str, float]
    test_accuracy: float
    test_accuracy_interval: tuple[float, float]  # 95% Wilson interval: what the test split's size allows to say
    test_balanced_accuracy: float  # the mean of the classes' recalls
    macro_f1: float
    test_log_loss: float | None  # for heads that give probabilities (logreg, knn, the SVMs with --probability)
    test_calibration_error: float | None
    test_by_confidence: list[dict] | None  # share of test images and accuracy at each minimum probability
    n_train: int
    n_test: int
    feature_dim: int
    search_seconds: float
    model_file: str
    confusion_png: str
    predictions_csv: str  # every test image's true and predicted class
    mistakes_png: str | None  # wrong test images pictured, where the cache's ids are image files
    n_wrong: int
    members: list[str]  # the cache entries whose features the head read side by side (one, unless an ensemble)
    class_names: list[str] = field(repr=False)
    report: str = field(repr=False)
    confusion: list[list[int]] = field(repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def grid_edge_note(grid: dict[str, list], cv_results: dict, best_index: int) -> str | None:
    """Where the best value of a numeric parameter is the grid's smallest or largest, and every fold scored it above
    the next value in (a slope toward the end, not a plateau or noise), the search stopped where the grid did and a
    value beyond it may score higher: say so, with a grid that goes on in the same steps."""
    candidates = cv_results["params"]
    best_params = candidates[best_index]
    fold_scores = np.array([cv_results[k] for k in cv_results if k.startswith("split") and k.endswith("_test_score")])
    tunable = {name: values for name, values in grid.items() if name.startswith("clf__")}
    for name, values in tunable.items():
        if len(values) < 2 or not all(is_number(v) and v > 0 for v in values):
            continue
        ordered, best = sorted(values), best_params[name]
        if best not in (ordered[0], ordered[-1]):
            continue
        end, inward = ("smallest", ordered[1]) if best == ordered[0] else ("largest", ordered[-2])
        neighbour = candidates.index({**best_params, name: inward})
        if not np.all(fold_scores[:, best_index] > fold_scores[:, neighbour]):
            continue
        # one significant digit keeps the grid readable (C=1e-05,3e-05,0.0001 rather than 1.11e-05,3.33e-05)
        beyond = [best, *(float(f"{best * (best / inward) ** k:.1g}") for k in (1, 2))]
        if all(isinstance(v, int) for v in values):
            beyond = [max(1, round(v)) for v in beyond]
        beyond = sorted(set(beyond))
        if len(beyond) == 1:  # n_neighbors=1: nothing lies beyond
            continue
        grid_text = format_grid({short_name(other): beyond if other == name else [best_params[other]]
                                 for other in tunable})
        short = short_name(name)
        return (f"note: the best {short}={best:g} is the {end} value of the grid and beat {short}={inward:g} in every "
                f"fold, so a value beyond it may score higher: try --grid \"{grid_text}\"")
    return None


def check_grid_values(estimator, grid: dict[str, list], x: np.ndarray, y: np.ndarray, grid_text: str,
                      head: str) -> None:
    """scikit-learn checks parameter values only when it fits: fit each combination once on two samples per class,
    so that a bad --grid value is one line before the search, not a traceback from inside it."""
    rows = np.concatenate([np.flatnonzero(y == label)[:2] for label in np.unique(y)])
    for params in ParameterGrid(grid):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # two samples per class: convergence warnings mean nothing here
                clone(estimator).set_params(**params).fit(x[rows], y[rows])
        except (ValueError, TypeError) as error:
            reason = " ".join(str(error).split())
            raise UsageError(f"--grid {grid_text!r} does not suit {head}: {reason}") from error


def check_neighbours(grid: dict[str, list], folds: StratifiedKFold, y: np.ndarray) -> None:
    """knn can ask for no more neighbours than a cross-validation split trains on (scikit-learn finds out only when
    it predicts, deep in the search)."""
    largest = max(grid.get("clf__n_neighbors", [0]))
    fold = min(len(train) for train, _ in folds.split(np.zeros(len(y)), y))
    cv = folds.get_n_splits()
    if largest > fold:
        raise UsageError(f"--grid n_neighbors={largest}: the smallest of the {cv} cross-validation splits trains on "
                         f"{fold} images; use {fold} or fewer neighbours")


def layer_grid(layer: str | None, layout: dict) -> tuple[str, list[str]]:
    """The starting layer and the layers to search: one, or with 'best' every cached layer but the logits."""
    if layer != "best":
        return layer or default_layer(layout), []
    candidates = [name for name in layout if name != "logits"]
    if len(candidates) < 2:
        raise UsageError(f"--layers best needs a cache with several layers; this one holds {', '.join(layout)}. "
                         "Extract with --layers all")
    return candidates[-1], candidates


def train_head(cache_path: str | Path | list[str | Path], head: str, grid_text: str | None = None, cv: int = 3,
               n_jobs: int = -1, exact: bool = False, pairwise: bool = False, layer: str | None = None,
               backend: str = "local", scheduler: str | None = None, probability: bool = False, balanced: bool = False,
               seed: int = 0, progress: bool = False, log: Callable[[str], None] = _logger.info) -> TrainResult:
    """GridSearchCV on the train split (over `layer` too when it is 'best'), then one score on the test split.

    Several cache entries of the same images (a list) are an ensemble: the head reads their features side by side,
    matched by image id, each member's `layer` scaled to an equal total variance (`LayerSelector`).

    With `probability` an SVM head is fitted with the best parameters to give probabilities too
    (`heads.with_probabilities`). With `balanced` the head weights each class by the inverse of its train count and
    the search scores balanced accuracy. `seed` shuffles the cross-validation folds; `progress` shows a bar over the
    fits. With backend 'dask' the search's fits run on the cluster at `scheduler`; refits run here."""
    if head not in heads.HEADS:
        raise UsageError(f"unknown head {head!r}; choose one of {', '.join(heads.HEADS)}")
    if n_jobs == 0:
        raise UsageError("--n-jobs must not be 0; give -1 for every core, or a number of parallel fits")
    cache = open_features(cache_path)
    ensemble = isinstance(cache, EnsembleCache)
    members = cache.members if ensemble else [cache]
    copies = int(cache.info.test_copies_of_train)
    if copies:
        log(f"warning: {copies} test image(s) of this cache are byte-for-byte copies of train images (named when it "
            "was extracted): the test accuracy counts them as unseen")
    x_train, y_train, _ = cache.load("train")
    x_test, y_test, test_ids = cache.load("test")
    if head != "svm" and (exact or pairwise):
        raise UsageError("--exact and --pairwise choose how the svm head is fitted; the linear heads have one way")
    if probability and head not in heads.CALIBRATED_HEADS:
        raise UsageError(f"--probability calibrates the SVMs ({', '.join(heads.CALIBRATED_HEADS)}); {head} gives "
                         "probabilities of its own")
    use_pairwise = head == "svm" and svm_is_pairwise(len(y_train), exact, pairwise)
    grid = parse_grid(grid_text, head, use_pairwise)
    start_layer, search_layers = layer_grid(layer, cache.member_layout if ensemble else cache.layout)
    key = cache.layer_key if ensemble else str  # a layer as users name it -> its columns' name in cache.layout
    if search_layers:
        grid = {"layer__layer": [key(name) for name in search_layers], **grid}
    check_cv(cv, y_train)
    estimator = build_head(head, cache.layout, key(start_layer), use_pairwise, balanced)
    estimator.named_steps["layer"].fit(x_train[:2])  # an unknown --layers fails here, before any search
    if grid_text:
        check_grid_values(estimator, grid, x_train, y_train, grid_text, head)
    folds = StratifiedKFold(cv, shuffle=True, random_state=seed)
    check_neighbours(grid, folds, y_train)
    if use_pairwise and backend == "local":
        n_jobs = pairwise_jobs(y_train, cv, n_jobs, log)
    if use_pairwise:
        why = "--pairwise" if pairwise else (f"{len(y_train)} train samples, above the {heads.EXACT_SVM_MAX_TRAIN} "
                                             "where scikit-learn's SVC takes a minute; --exact forces it")
        log(f"svm: the RBF SVC fitted one class pair at a time on BLAS-computed kernels (PairwiseSVC: {why})")
    uneven = None if balanced or head not in heads.WEIGHTED_HEADS else imbalance_note(y_train, cache.class_names)
    if uneven:
        log(uneven)
    combos = int(np.prod([len(v) for v in grid.values()]))
    scoring = "balanced_accuracy" if balanced else "accuracy"
    log(f"{head}: GridSearchCV over {dict((short_name(k), v) for k, v in grid.items())}, "
        f"{cv}-fold on {len(y_train)} train samples x {x_train.shape[1]} features ({combos * cv} fits + 1)"
        + (", classes weighted alike, scored by balanced accuracy" if balanced else ""))
    search = GridSearchCV(estimator, grid, scoring=scoring, cv=folds, n_jobs=n_jobs, error_score="raise",
                          refit=not probability)
    started = time.perf_counter()
    with sweep_backend(backend, scheduler, log), fits_bar(combos * cv, head, progress):
        search.fit(x_train, y_train)
    if probability:
        log(f"{head}: probabilities learned from the best parameters' out-of-fold decision values ({cv} fits + 1)")
        model = with_probabilities(clone(estimator).set_params(**search.best_params_), folds, n_jobs)
        model.fit(x_train, y_train)
    else:
        model = search.best_estimator_
    seconds = time.perf_counter() - started  # the whole training: search, and the refit on all samples
    note = grid_edge_note(grid, search.cv_results_, search.best_index_)
    if note:
        log(note)
    probabilities = class_probabilities(model, x_test, len(cache.class_names))
    # a model with probabilities predicts its most probable class: read it off rather than run the test split through
    # the model again (on CIFAR-10: knn's second nearest-neighbour search, 12.8 s; svm --probability's kernels, 4.3 s)
    y_pred = model.predict(x_test) if probabilities is None else probabilities.argmax(axis=1)
    evaluation = evaluate(y_test, y_pred, cache.class_names, probabilities)

    base = output_base(cache.path, layer)
    model_path = Path(f"{base}.{head}.joblib")
    png = plot_confusion(evaluation.confusion, cache.class_names, Path(f"{base}.{head}.confusion.png"),
                         f"{head} on {cache.info.backbone} features: test accuracy {evaluation.accuracy:.3f}")
    predictions = Path(f"{base}.{head}.predictions.csv")
    mistakes = save_test_predictions(predictions, Path(f"{base}.{head}.mistakes.png"),
                                     cache.info.dataset_source, test_ids, y_test, y_pred, probabilities,
                                     cache.class_names, f"{head} on {cache.info.backbone} features: wrong test "
                                     "images, true -> predicted")
    layer_names = {key(name): name for name in search_layers or [start_layer]}
    cv_scores, layer_scores = _cv_tables(search, layer_names)
    selector = model.named_steps["layer"]
    result = TrainResult(
        head=head, cache_file=str(cache.path),
        estimator=" -> ".join(repr(step) for name, step in model.steps if name != "layer"),
        best_params=cv_scores[search.best_index_]["params"], layer=layer_names[selector.layer],
        scoring=scoring, cv_accuracy=float(search.best_score_), cv_scores=cv_scores, layer_scores=layer_scores,
        test_accuracy=evaluation.accuracy, test_accuracy_interval=evaluation.accuracy_interval,
        test_balanced_accuracy=evaluation.balanced_accuracy,
        macro_f1=evaluation.macro_f1, test_log_loss=evaluation.log_loss,
        test_calibration_error=evaluation.calibration_error, test_by_confidence=evaluation.by_confidence,
        n_train=len(y_train), n_test=len(y_test),
        feature_dim=int(selector.transform(x_train[:1]).shape[1]), search_seconds=seconds, model_file=str(model_path),
        confusion_png=str(png), predictions_csv=str(predictions), mistakes_png=str(mistakes) if mistakes else None,
        n_wrong=int(np.sum(y_pred != y_test)), members=[str(member.path) for member in members],
        class_names=cache.class_names, report=evaluation.report,
        confusion=evaluation.confusion.tolist())
    provenance = [member_provenance(member.info) for member in members]
    save_model(model, model_path,
               {**result.to_dict(), "provenance": provenance[0] if len(members) == 1 else provenance})
    return result


def class_probabilities(model, features: np.ndarray, n_classes: int) -> np.ndarray | None:
    """The model's probabilities with a column for every class of the cache (a class without train images has
    none in `model.classes_`), or None where it gives none."""
    if not hasattr(model, "predict_proba"):
        return None
    probabilities = np.zeros((len(features), n_classes))
    probabilities[:, model.classes_] = model.predict_proba(features)
    return probabilities


def pairwise_jobs(labels: np.ndarray, cv: int, n_jobs: int, log: Callable[[str], None]) -> int:
    """Parallel PairwiseSVC fits that fit in memory together: each holds its class-pair kernels (about 1 GB at
    CIFAR-10's fold sizes), so all cores at once can outgrow the machine. The final fit, on every train row, must
    fit alone."""
    available = available_memory()
    if available is None:
        return n_jobs
    counts = np.bincount(labels)
    whole = fit_memory_bytes(counts)
    if whole > available:
        raise UsageError(f"the svm head's kernels need about {whole / 2**30:.1f} GiB for {len(labels)} train rows "
                         f"and {available / 2**30:.1f} GiB are free; use --exact (slower, little memory) or the "
                         "linearsvm or logreg head")
    per_fit = fit_memory_bytes(counts * (cv - 1) // cv)
    wanted = effective_n_jobs(n_jobs)
    fits = max(1, int(0.8 * available // per_fit))
    if wanted > fits:
        log(f"svm: {fits} parallel fit(s) instead of {wanted}: each holds about {per_fit / 2**30:.1f} GiB of kernels "
            f"and {available / 2**30:.1f} GiB are free (--n-jobs sets it)")
        return fits
    return n_jobs


def member_provenance(info) -> dict:
    """What `predict` checks new images' features against, as the cache file holds it."""
    recorded = info.to_attrs()
    return {k: recorded[k] for k in ("backbone", "weights", "weights_sha256", "layer", "pool", "image_size",
                                     "precision", "dataset", "dataset_fingerprint", "transform")}


def _cv_tables(search: GridSearchCV, layer_names: dict[str, str]) -> tuple[list[dict], dict[str, float]]:
    """Mean CV accuracy of every parameter combination, and the best of each layer (one layer unless 'best');
    layers by the names users give (`layer_names`: the selector's name -> the user's)."""
    cv_scores = [{"params": {short_name(k): layer_names.get(v, v) if k == "layer__layer" else v
                             for k, v in params.items()}, "mean_cv_accuracy": float(m)}
                 for params, m in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                                      strict=True)]
    layers = list(layer_names.values())
    if len(layers) == 1:
        return cv_scores, {layers[0]: float(search.best_score_)}
    return cv_scores, {name: max(e["mean_cv_accuracy"] for e in cv_scores if e["params"]["layer"] == name)
                       for name in layers}
