"""What `extract --flip` buys: the heads on features averaged with the mirror image's, against the plain features.

    python bench/flip_features.py [--backbone efficientnet_lite0] [--limit-per-class N] [--heads logreg,svm]
        [--cache-dir /tmp/flip-bench] [-- EXTRA EXTRACT OPTIONS]

Runs, as a user does, `python -m extract BACKBONE ../shared/datasets/cifar10` without and with `--flip` (each a
whole process, timed), then `python -m classify HEAD CACHE --json` on both with the default grids. Per head it
prints the test accuracy of each and the paired count over the same test images: how many the flipped features got
right that the plain ones got wrong, and the reverse, with McNemar's exact two-sided p-value (is the difference more
than the test split's noise?).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from imbalanced import CIFAR, run
from scipy.stats import binomtest


def right_per_image(predictions_csv: str | Path) -> dict[str, bool]:
    with open(predictions_csv, newline="") as file:
        return {row["id"]: row["true"] == row["predicted"] for row in csv.DictReader(file)}


def paired(plain_csv: str | Path, flipped_csv: str | Path) -> tuple[int, int, float]:
    """Test images right only with --flip, right only without, and McNemar's exact two-sided p-value."""
    a, b = right_per_image(plain_csv), right_per_image(flipped_csv)
    gained = sum(b[i] and not a[i] for i in a)
    lost = sum(a[i] and not b[i] for i in a)
    return gained, lost, binomtest(gained, gained + lost).pvalue if gained + lost else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--heads", default="logreg,linearsvm,svm")
    parser.add_argument("--cache-dir", default="/tmp/flip-bench")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more options for python -m extract, after --")
    args = parser.parse_args()
    extra = [option for option in args.extra if option != "--"]
    limit = ["--limit-per-class", str(args.limit_per_class)] if args.limit_per_class else []
    caches = {}
    for flip in (False, True):
        stdout, seconds = run(["extract", args.backbone, str(CIFAR), "--cache-dir", args.cache_dir, *limit, *extra,
                               *(["--flip"] if flip else [])])
        caches[flip] = stdout.strip().splitlines()[-1]
        print(f"extract{' --flip' if flip else ''}: {seconds:.1f} s whole process -> {Path(caches[flip]).name}",
              flush=True)
    print(f"{'head':<10} {'plain':>7} {'--flip':>7} {'points':>7} {'only flip right':>15} {'only plain right':>16} "
          f"{'McNemar p':>10}  {'head s plain/flip':>17}  best parameters")
    for head in args.heads.split(","):
        results = {}
        for flip, cache in caches.items():
            stdout, seconds = run(["classify", head, cache, "--json"])
            results[flip] = (json.loads(stdout), seconds)
        (plain, plain_s), (flipped, flip_s) = results[False], results[True]
        gained, lost, p = paired(plain["predictions_csv"], flipped["predictions_csv"])
        print(f"{head:<10} {plain['test_accuracy']:>7.4f} {flipped['test_accuracy']:>7.4f} "
              f"{100 * (flipped['test_accuracy'] - plain['test_accuracy']):>+7.2f} {gained:>15} {lost:>16} "
              f"{p:>10.2g}  {plain_s:>8.1f}/{flip_s:<8.1f}  {plain['best_params']} / {flipped['best_params']}",
              flush=True)


if __name__ == "__main__":
    main()
