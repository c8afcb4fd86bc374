"""The heads as scikit-learn Pipelines, each with its default GridSearchCV grid, and how `svm` scales.

`svm` is an RBF-kernel SVC. scikit-learn's `SVC` computes kernel values one at a time as its solver asks for
them, so its fit time grows fast with the training size (measured here on 1,280-d features: 40 s at 10,000
samples, about 10 minutes at 50,000). Up to EXACT_SVM_MAX_TRAIN samples, where it takes under a minute, the head is
`SVC` itself, the reference implementation; above, it is `PairwiseSVC`, the same model fitted pair of classes by
pair on kernel matrices computed with BLAS (2 s at 10,000, 50 s at 50,000; see classify/pairwise_svm.py).
`--exact` forces `SVC`, `--pairwise` forces `PairwiseSVC`.

The SVMs give decision values, not probabilities; `with_probabilities` calibrates them.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.coupling import CoupledSVC
from classify.linear_svm import LBFGSLinearSVC
from classify.pairwise_svm import PairwiseSVC
from extract.errors import UsageError

# Default grids: a decade apart, around the values that work for CNN features.
DEFAULT_GRIDS = {
    "svm": {"C": [1.0, 10.0]},
    "linearsvm": {"C": [0.0001, 0.0003, 0.001]},
    "logreg": {"C": [0.001, 0.01, 0.1]},
    "knn": {"n_neighbors": [5, 10, 20]},
}
HEADS = tuple(DEFAULT_GRIDS)
CALIBRATED_HEADS = ("svm", "linearsvm")  # heads without probabilities of their own
WEIGHTED_HEADS = ("svm", "linearsvm", "logreg")  # heads whose loss can weight classes (knn votes by neighbours)
EXACT_SVM_MAX_TRAIN = 10_000


class LayerSelector(TransformerMixin, BaseEstimator):
    """The columns of one cached layer, or of several joined by '+' ('stage3+penultimate'); with no `layout`, every
    column (features that are one layer).

    Joined layers are each scaled to a total variance of 1 (learned on the training data), so a wide layer does
    not drown a narrow one. `layer` is an ordinary parameter, so GridSearchCV can search over layers.
    """

    def __init__(self, layout: dict[str, tuple[int, int]] | None = None, layer: str = "penultimate"):
        self.layout = layout
        self.layer = layer

    def _blocks(self) -> list[tuple[int, int]]:
        if self.layout is None:
            return [(0, self.n_features_in_)]
        names = self.layer.split("+")
        unknown = [name for name in names if name not in self.layout]
        if unknown:
            asked = self.layer.replace("+", ",")
            raise UsageError(f"--layers {asked!r}: this cache has no layer {', '.join(unknown)}; it holds "
                             f"{', '.join(self.layout)} (extract others with --layers)")
        return [tuple(self.layout[name]) for name in names]

    def fit(self, X, y=None) -> LayerSelector:  # noqa: N803 - scikit-learn's names
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        blocks = self._blocks()
        if max(stop for _, stop in blocks) > X.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features; the layout reads columns up to "
                             f"{max(stop for _, stop in blocks)}")
        self.scales_ = [1.0] if len(blocks) == 1 else [
            float(1.0 / np.sqrt(max(X[:, start:stop].var(axis=0).sum(), 1e-12))) for start, stop in blocks]
        return self

    def transform(self, X) -> np.ndarray:  # noqa: N803
        check_is_fitted(self, "scales_")
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        blocks = self._blocks()
        if len(blocks) == 1:
            start, stop = blocks[0]
            return X[:, start:stop]
        return np.hstack([X[:, start:stop] * X.dtype.type(scale)
                          for (start, stop), scale in zip(blocks, self.scales_, strict=True)])


def svm_is_pairwise(n_train: int, exact: bool = False, pairwise: bool = False) -> bool:
    if exact and pairwise:
        raise UsageError("--exact and --pairwise exclude each other; give one")
    return pairwise or (not exact and n_train > EXACT_SVM_MAX_TRAIN)


def build_head(name: str, layout: dict[str, tuple[int, int]] | None = None, layer: str = "penultimate",
               pairwise: bool = False, balanced: bool = False) -> Pipeline:
    """An unfitted Pipeline: `layer` picks the cached layer's columns, `clf` is the classifier.

    Linear heads standardise each feature first (their solvers converge far faster); the RBF SVM works on the
    raw features, whose scale gamma='scale' already accounts for (measured here: 0.3 points better). `balanced`
    weights each class by the inverse of its train count (class_weight='balanced'), so that every class counts as
    much in the loss.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    if balanced and name not in WEIGHTED_HEADS:
        raise UsageError(f"--balanced weights the classes of {', '.join(WEIGHTED_HEADS)}; {name} has no class weights")
    weight = "balanced" if balanced else None
    select = [("layer", LayerSelector(layout, layer))] if layout else []
    if name == "svm":
        if pairwise:
            return Pipeline([*select, ("clf", PairwiseSVC(gamma="scale", class_weight=weight))])
        return Pipeline([*select, ("clf", SVC(kernel="rbf", gamma="scale", cache_size=2000, class_weight=weight))])
    if name == "linearsvm":
        # LinearSVC's model fitted by L-BFGS (classify/linear_svm.py); the default sweep on all of CIFAR-10 takes
        # 38.7 s against 195.2 s with liblinear
        return Pipeline([*select, ("scale", StandardScaler()),
                         ("clf", LBFGSLinearSVC(tol=1e-3, class_weight=weight))])
    if name == "logreg":
        # tol 1e-3 as for linearsvm: lbfgs stops 2-5x sooner at the same accuracy (33,333 x 1,280 CIFAR features:
        # C=0.001 5.3 s against 11.0 s, test 0.8003 against 0.8001; C=1 9.1 s against 40.9 s)
        return Pipeline([*select, ("scale", StandardScaler()),
                         ("clf", LogisticRegression(tol=1e-3, max_iter=2000, class_weight=weight))])
    if name == "knn":
        # no training: the labels of the nearest train images by cosine similarity (unit-length rows, then Euclidean
        # distance by matrix products), weighted by closeness, as self-supervised features (DINOv2's) are judged
        return Pipeline([*select, ("normalize", Normalizer()),
                         ("clf", KNeighborsClassifier(weights="distance", algorithm="brute"))])
    raise UsageError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")


def with_probabilities(pipeline: Pipeline, cv, n_jobs: int | None = None) -> Pipeline:
    """The unfitted SVM pipeline with its classifier wrapped to give probabilities learned from the out-of-fold
    decision values of `cv` (its folds' fits more, and one on all the data); the class predicted is the most
    probable. The RBF SVM's pairwise values are coupled as libsvm does (classify/coupling.py); the linear SVM's
    one-vs-rest margins go through one softmax with a fitted temperature (measured on 4,000 CIFAR-10 images: log loss
    0.70, as logreg's; a sigmoid per class: 0.71)."""
    classifier = pipeline.steps[-1][1]
    if isinstance(classifier, LBFGSLinearSVC):
        calibrated = CalibratedClassifierCV(classifier, method="temperature", cv=cv, ensemble=False, n_jobs=n_jobs)
    else:
        calibrated = CoupledSVC(classifier, cv=cv, n_jobs=n_jobs)
    pipeline.steps[-1] = ("clf", calibrated)
    return pipeline


def _parse_value(text: str):
    text = text.strip()
    if text in ("None", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(text: str | None, head: str, pairwise: bool = False) -> dict[str, list]:
    """'C=0.1,1,10; gamma=scale,0.01' -> {'clf__C': [...], 'clf__gamma': [...]}, checked against the head."""
    grid = DEFAULT_GRIDS[head] if not text else {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        name, sep, values = part.partition("=")
        parsed = [_parse_value(v) for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not parsed:
            raise UsageError(f"--grid part {part!r} does not parse; write it as NAME=V1,V2[;NAME=V1,...], "
                             "e.g. \"C=0.1,1,10\"")
        grid[name.strip()] = parsed
    valid = build_head(head, pairwise=pairwise).named_steps["clf"].get_params()
    unknown = [name for name in grid if name not in valid]
    if unknown:
        raise UsageError(f"{head} has no parameter {', '.join(unknown)}; its parameters are "
                         f"{', '.join(sorted(valid))}")
    return {f"clf__{name}": values for name, values in grid.items()}


def is_number(value) -> bool:
    """A grid value that is a number (True and False are ints to Python, not to a grid)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_grid(grid: dict[str, list]) -> str:
    """parse_grid's inverse, as --grid takes it: {'C': [1.0, 10.0], 'gamma': ['scale']} -> 'C=1,10; gamma=scale'."""
    return "; ".join(f"{name}=" + ",".join(f"{v:g}" if is_number(v) else str(v) for v in values)
                     for name, values in grid.items())


def fitted_parameter_count(pipeline: Pipeline) -> int:
    """Numbers the fitted classifier learned (weights and biases; for a kernel SVM, its dual coefficients)."""
    classifier = pipeline.named_steps["clf"]
    calibration = 0  # with_probabilities' numbers: a temperature, or a sigmoid's two per pair of classes
    if isinstance(classifier, CalibratedClassifierCV):
        classifier, calibration = classifier.calibrated_classifiers_[0].estimator, 1
    elif isinstance(classifier, CoupledSVC):
        classifier, calibration = classifier.estimator_, classifier.pair_sigmoids_.size
    weights = "dual_coef_" if hasattr(classifier, "dual_coef_") else "coef_"
    return int(getattr(classifier, weights).size + classifier.intercept_.size) + calibration
