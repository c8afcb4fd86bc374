"""scikit-learn's RBF-kernel SVC, fitted one class pair at a time on kernel matrices computed with BLAS.

Why: `SVC` (libsvm) computes each kernel value when its solver needs it, a scalar loop over the features, and on
50,000 x 1,280 CNN features that is most of a 10-minute fit. libsvm's multi-class SVC is one binary SVC per pair
of classes (one-vs-one, then a vote), so each pair's whole kernel matrix can be computed up front, as a few
matrix products, and handed to the same solver (`SVC(kernel="precomputed")`) with the same C and tolerance. That
is the same optimisation problem solved by the same code: the same model, up to the solver's tolerance and
float32 rounding in the kernel (the tests check that the predictions equal SVC's).

The cost is memory: one pair's kernel is (n_a + n_b)^2 float64 values. A pair larger than `max_pair_samples` is
fitted by `SVC` on its features instead (libsvm's own kernel cache; slow, but the same model).
"""

from __future__ import annotations

import itertools

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

PREDICT_CHUNK = 2048  # test rows per kernel block at predict time: bounded memory for any test size


def fit_memory_bytes(class_counts) -> int:
    """What one fit holds at its peak: every class's kernel with itself (float32, kept for all its pairs) and the
    largest pair's whole kernel (float64) with its across block."""
    counts = sorted((int(c) for c in class_counts), reverse=True)
    pair = sum(counts[:2])
    return 4 * sum(c * c for c in counts) + 8 * pair * pair + 4 * counts[0] * counts[1]


def available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux's MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _squared_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def class_pairs(n_classes: int) -> itertools.combinations:
    """libsvm's order of the one-vs-one problems: (0, 1), (0, 2), ..., (1, 2), ..."""
    return itertools.combinations(range(n_classes), 2)


def rbf_kernel_block(a: np.ndarray, b: np.ndarray, gamma: float, a_norms: np.ndarray | None = None,
                     b_norms: np.ndarray | None = None) -> np.ndarray:
    """exp(-gamma * |a_i - b_j|^2) as one matrix product (in a's dtype) and in-place element-wise steps.
    Not sklearn.metrics.pairwise.rbf_kernel: for float32 input it computes distances in float64 blocks, at half
    the GEMM rate, and the kernel is most of the fit."""
    a_norms = _squared_norms(a) if a_norms is None else a_norms
    b_norms = _squared_norms(b) if b_norms is None else b_norms
    kernel = a @ b.T
    kernel *= -2.0
    kernel += a_norms[:, None]
    kernel += b_norms[None, :]
    np.maximum(kernel, 0.0, out=kernel)  # rounding can make a squared distance slightly negative
    kernel *= -gamma
    return np.exp(kernel, out=kernel)


class PairwiseSVC(ClassifierMixin, BaseEstimator):
    """RBF-kernel SVC (one-vs-one, like `sklearn.svm.SVC`) whose binary problems get precomputed kernels.

    Parameters are SVC's: `C`, `gamma` ('scale', as SVC: 1 / (n_features * X.var()), or a number), `tol`,
    `cache_size` (only for pairs fitted on their features), `decision_function_shape`, `class_weight` (each class's C
    times its weight in every pair it is in, as libsvm's; 'balanced' counts the classes over all the data). The
    fitted attributes have SVC's layout: `classes_`, `gamma_`, `support_` (training rows, grouped by class),
    `support_vectors_`, `n_support_`, `dual_coef_` (n_classes - 1, n_support_vectors) and `intercept_` (one per
    pair, in `class_pairs` order).
    """

    def __init__(self, C: float = 1.0, gamma: str | float = "scale", tol: float = 1e-3, cache_size: float = 2000,
                 max_pair_samples: int = 16_000, decision_function_shape: str = "ovr",
                 class_weight: dict | str | None = None):
        self.C = C
        self.gamma = gamma
        self.tol = tol
        self.cache_size = cache_size
        self.max_pair_samples = max_pair_samples
        self.decision_function_shape = decision_function_shape
        self.class_weight = class_weight

    def fit(self, X, y) -> PairwiseSVC:
        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"PairwiseSVC needs 2 or more classes, got {len(self.classes_)} class")
        self.gamma_ = (1.0 / (X.shape[1] * max(float(X.var(dtype=np.float64)), 1e-12)) if self.gamma == "scale"
                       else float(self.gamma))
        rows = [np.flatnonzero(labels == k) for k in range(len(self.classes_))]
        weights = (np.ones(len(rows)) if self.class_weight is None
                   else compute_class_weight(self.class_weight, classes=self.classes_, y=y))
        norms = [_squared_norms(X[r]) for r in rows]
        within: dict[int, np.ndarray] = {}  # kernel of a class with itself, reused by each of its pairs
        coefs: list[dict[int, np.ndarray]] = [{} for _ in rows]  # class -> {other class: coef per class row}
        intercepts = []
        for a, b in class_pairs(len(rows)):
            targets = np.r_[np.ones(len(rows[a])), -np.ones(len(rows[b]))]  # libsvm's sign: + is the first class
            pair_weights = {1: weights[a], -1: weights[b]}
            if len(rows[a]) + len(rows[b]) > self.max_pair_samples:
                svc = SVC(C=self.C, gamma=self.gamma_, tol=self.tol, cache_size=self.cache_size,
                          class_weight=pair_weights)
                svc.fit(X[np.concatenate([rows[a], rows[b]])], targets)
            else:
                for k in (a, b):
                    if k not in within:
                        within[k] = rbf_kernel_block(X[rows[k]], X[rows[k]], self.gamma_, norms[k], norms[k])
                svc = SVC(kernel="precomputed", C=self.C, tol=self.tol, class_weight=pair_weights)
                svc.fit(self._pair_kernel(X, rows[a], rows[b], norms[a], norms[b], within[a], within[b]), targets)
            if b == len(rows) - 1:  # the last pair of class a
                within.pop(a, None)
            # a binary SVC's decision is positive for classes_[1], here +1 (class a): its coefficients as they are
            pair_coef = np.zeros(len(rows[a]) + len(rows[b]))
            pair_coef[svc.support_] = svc.dual_coef_[0]
            coefs[a][b], coefs[b][a] = pair_coef[:len(rows[a])], pair_coef[len(rows[a]):]
            intercepts.append(float(svc.intercept_[0]))
        self._set_support(X, rows, coefs)
        self.intercept_ = np.asarray(intercepts)
        return self

    def _pair_kernel(self, X, rows_a, rows_b, norms_a, norms_b, within_a, within_b) -> np.ndarray:
        size_a = len(rows_a)
        kernel = np.empty((size_a + len(rows_b),) * 2)
        kernel[:size_a, :size_a] = within_a
        kernel[size_a:, size_a:] = within_b
        across = rbf_kernel_block(X[rows_a], X[rows_b], self.gamma_, norms_a, norms_b)
        kernel[:size_a, size_a:] = across
        kernel[size_a:, :size_a] = across.T
        return kernel

    def _set_support(self, X: np.ndarray, rows: list[np.ndarray], coefs: list[dict[int, np.ndarray]]) -> None:
        """SVC's layout: a class's support vectors are its rows with a nonzero coefficient in any of its pairs;
        row j of dual_coef_ holds, for a class-i vector, its coefficient in the pair with class j (j < i) or j + 1."""
        support, n_support, columns = [], [], []
        for k, k_rows in enumerate(rows):
            others = np.stack([coefs[k][j] for j in range(len(rows)) if j != k])
            used = np.flatnonzero(np.any(others != 0, axis=0))
            support.append(k_rows[used])
            n_support.append(len(used))
            columns.append(others[:, used])
        self.support_ = np.concatenate(support)
        self.support_vectors_ = X[self.support_]
        self.n_support_ = np.asarray(n_support, dtype=np.int32)
        self.dual_coef_ = np.hstack(columns)

    def decision_function(self, X) -> np.ndarray:
        """As SVC's: (n_samples,) for two classes, positive for classes_[1]; else per class its votes plus a
        confidence below 1/2 (shape 'ovr', what probability calibration reads), or per pair of classes the
        one-vs-one values, positive for the pair's first class (shape 'ovo')."""
        if self.decision_function_shape not in ("ovr", "ovo"):
            raise ValueError(f"decision_function_shape must be 'ovr' or 'ovo', not {self.decision_function_shape!r}")
        decisions = self._pair_decisions(X)
        if len(self.classes_) == 2:
            return -decisions[:, 0]
        if self.decision_function_shape == "ovo":
            return decisions
        margins = np.zeros((len(decisions), len(self.classes_)))
        for p, (a, b) in enumerate(class_pairs(len(self.classes_))):
            margins[:, a] += decisions[:, p]
            margins[:, b] -= decisions[:, p]
        return _votes(decisions, len(self.classes_)) + margins / (3 * (np.abs(margins) + 1))  # SVC's squashing

    def _pair_decisions(self, X) -> np.ndarray:
        """(n_samples, n_pairs) one-vs-one decision values, positive for the pair's first class."""
        check_is_fitted(self, "support_vectors_")
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        sv_norms = _squared_norms(self.support_vectors_)
        bounds = np.cumsum(np.r_[0, self.n_support_])
        out = np.empty((len(X), len(self.intercept_)))
        for start in range(0, len(X), PREDICT_CHUNK):
            kernel = rbf_kernel_block(X[start:start + PREDICT_CHUNK], self.support_vectors_, self.gamma_,
                                      b_norms=sv_norms)
            # per class: its vectors' kernel columns times their coefficients in each of the class's pairs
            by_class = [kernel[:, lo:hi] @ self.dual_coef_[:, lo:hi].T for lo, hi in itertools.pairwise(bounds)]
            for p, (a, b) in enumerate(class_pairs(len(self.classes_))):
                out[start:start + PREDICT_CHUNK, p] = by_class[a][:, b - 1] + by_class[b][:, a] + self.intercept_[p]
        return out

    def predict(self, X) -> np.ndarray:
        """libsvm's vote: each pair votes for one of its classes; ties go to the lower class index."""
        decisions = self._pair_decisions(X)  # first: it raises NotFittedError before fit
        return self.classes_[_votes(decisions, len(self.classes_)).argmax(axis=1)]


def _votes(decisions: np.ndarray, n_classes: int) -> np.ndarray:
    """Each pair's vote (for its first class where its decision value is positive), counted per class."""
    votes = np.zeros((len(decisions), n_classes), dtype=np.int64)
    for p, (a, b) in enumerate(class_pairs(n_classes)):
        first = decisions[:, p] > 0
        votes[:, a] += first
        votes[:, b] += ~first
    return votes
