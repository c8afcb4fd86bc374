"""Heads at scale: time and accuracy of each head's default sweep on a feature cache, plus the exact SVC.

    python bench/heads_speed.py CACHE_FILE [--exact-c 10] [--heads svm,linearsvm,logreg]

Each head runs through `classify.train.train_head`, the code `python -m classify` runs, with its default grid.
The exact RBF SVC is fitted once per --exact-c value on all training samples as the reference
(about 10 minutes each on 50,000 x 1,280 features on 2 cores; --exact-c '' skips it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.svm import SVC  # noqa: E402

from classify.models import load_model  # noqa: E402
from classify.train import train_head  # noqa: E402
from extract.store import open_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache_file")
    parser.add_argument("--heads", default="svm,linearsvm,logreg")
    parser.add_argument("--exact-c", default="10", help="C values for the exact SVC reference ('' to skip)")
    args = parser.parse_args()

    cache = open_cache(args.cache_file)
    x_train, y_train, _ = cache.load("train")
    x_test, y_test, _ = cache.load("test")
    print(f"cache: {cache.path.name}\ntrain {x_train.shape}, test {x_test.shape}\n", flush=True)
    rows = []
    for head in filter(None, args.heads.split(",")):
        started = time.perf_counter()
        result = train_head(cache.path, head, log=lambda m: print(f"  {m}", flush=True))
        steps = " -> ".join(type(step).__name__ for _, step in load_model(result.model_file)[0].steps)
        rows.append((f"{head} (default sweep)", steps, result.best_params, time.perf_counter() - started,
                     result.search_seconds, result.test_accuracy))
        print(f"  {head}: {rows[-1][3]:.1f} s, test {result.test_accuracy:.4f}", flush=True)
    for c in [float(v) for v in args.exact_c.split(",") if v]:
        started = time.perf_counter()
        model = SVC(C=c, gamma="scale", cache_size=2000).fit(x_train, y_train)
        fit = time.perf_counter() - started
        accuracy = float(np.mean(model.predict(x_test) == y_test))
        rows.append(("svm --exact (one fit)", "SVC", {"C": c}, time.perf_counter() - started, fit, accuracy))
        print(f"  exact SVC C={c}: fit {fit:.1f} s, test {accuracy:.4f}", flush=True)

    print("\n| head | estimator | train size | dim | best params | wall s (with test) | fit/sweep s | test acc |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for name, estimator, params, wall, fit, accuracy in rows:
        print(f"| {name} | {estimator} | {len(y_train)} | {x_train.shape[1]} | {params} | {wall:.1f} | {fit:.1f} | "
              f"{accuracy:.4f} |")


if __name__ == "__main__":
    main()
