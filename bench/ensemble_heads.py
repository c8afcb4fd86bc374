"""Which head scales to an ensemble's features: the exact RBF SVM against approximations, on the same cached rows.

    python bench/ensemble_heads.py cache/A.h5 [cache/B.h5 ...] [--heads exact,nystroem-2000,...] [--C 10]

Each head is fitted once on the whole train split with fixed parameters (the C the default search picks on CIFAR-10)
and scored on the test split, each in a process of its own so that its peak memory (max RSS, which includes the
features themselves) is its own. Several entries are read as `classify` reads an ensemble: side by side, matched by
image, each member's block scaled to a total variance of 1.

Heads: exact (PairwiseSVC, the model of `classify svm` above 10,000 rows), nystroem-K (scikit-learn's Nystroem
with K components and the SVM's gamma, then a linear SVM on standardised columns), pca-K (PCA to K dimensions per
member, then the exact SVM).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LINEAR_C = 0.001  # the linear SVM on standardised Nystroem columns: the middle of `classify linearsvm`'s grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(paths: list[str]):
    from classify.heads import LayerSelector
    from extract.ensemble import open_features

    cache = open_features(paths if len(paths) > 1 else paths[0])
    layer = cache.layer_key("penultimate") if len(paths) > 1 else "penultimate"
    x_train, y_train, _ = cache.load("train")
    x_test, y_test, _ = cache.load("test")
    selector = LayerSelector(cache.layout, layer).fit(x_train)
    blocks = [(0, 0)]
    if len(paths) > 1:
        blocks = [tuple(cache.layout[name]) for name in layer.split("+")]
    return selector.transform(x_train), y_train, selector.transform(x_test), y_test, blocks


def build(head: str, c: float, blocks):
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from classify.linear_svm import LBFGSLinearSVC
    from classify.pairwise_svm import PairwiseSVC

    if head == "exact":
        return PairwiseSVC(C=c, gamma="scale")
    kind, _, size = head.partition("-")
    if kind == "nystroem":
        return make_pipeline(GammaScaledNystroem(int(size)), StandardScaler(), LBFGSLinearSVC(C=LINEAR_C, tol=1e-3))
    if kind == "pca":
        columns = [(f"pca{i}", PCA(int(size), random_state=0), list(range(start, stop)))
                   for i, (start, stop) in enumerate(blocks)] if blocks != [(0, 0)] else []
        reduce = ColumnTransformer(columns) if columns else PCA(int(size), random_state=0)
        return make_pipeline(reduce, PairwiseSVC(C=c, gamma="scale"))
    raise SystemExit(f"unknown head {head}")


class GammaScaledNystroem:
    """Nystroem with the exact SVM's gamma='scale' (1 / (n_features * X.var())), learned at fit."""

    def __init__(self, components: int):
        self.components = components

    def fit(self, x, y=None):
        from sklearn.kernel_approximation import Nystroem

        gamma = 1.0 / (x.shape[1] * float(x.var(dtype=np.float64)))
        self.map_ = Nystroem(gamma=gamma, n_components=self.components, random_state=0).fit(x)
        return self

    def transform(self, x):
        return self.map_.transform(x).astype(np.float32)

    def fit_transform(self, x, y=None):
        return self.fit(x).transform(x)

    def get_params(self, deep=True):
        return {"components": self.components}


def one(paths: list[str], head: str, c: float) -> dict:
    x_train, y_train, x_test, y_test, blocks = load(paths)
    model = build(head, c, blocks)
    started = time.perf_counter()
    model.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    accuracy = float(np.mean(model.predict(x_test) == y_test))
    return {"head": head, "test_accuracy": round(accuracy, 4), "fit_seconds": round(fit_seconds, 1),
            "predict_seconds": round(time.perf_counter() - started, 1), "rows": len(y_train),
            "dims": int(x_train.shape[1]),
            "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entries", nargs="+")
    parser.add_argument("--heads", default="exact,nystroem-2000,nystroem-4000,pca-256")
    parser.add_argument("--C", type=float, default=10.0)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.entries, args.one, args.C)))
        return
    print("| head | rows x dims | test accuracy | fit s | predict s | peak memory GiB |\n|---|---|---:|---:|---:|---:|")
    for head in args.heads.split(","):
        done = subprocess.run([sys.executable, __file__, *args.entries, "--one", head, "--C", str(args.C)],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"| {head} | failed: {done.stderr.strip().splitlines()[-1]} |", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {head} | {row['rows']} x {row['dims']} | {row['test_accuracy']:.4f} | {row['fit_seconds']:.0f} | "
              f"{row['predict_seconds']:.0f} | {row['max_rss_gib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
