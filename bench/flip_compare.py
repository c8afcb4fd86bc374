"""What `pipelines compare --flip` buys: frozen features and fine-tuned networks scored with the mirror image too.

    python bench/flip_compare.py [--limit-per-class 200] [--image-size 96] [--epochs 6]
        [--strategies frozen,head,partial] [--workdir /tmp/flip-compare]

Runs `python -m pipelines compare efficientnet_lite0 ../shared/datasets/cifar10` as a user does, without and with
`--flip`, on the same subset and seed, and prints per strategy the test accuracy of each and the paired count over
the same test images (right only with --flip, right only without) with McNemar's exact two-sided p-value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flip_features import paired
from imbalanced import CIFAR, run
from imbalanced_finetune import predictions_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-per-class", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--strategies", default="frozen,head,partial")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/flip-compare"))
    args = parser.parse_args()
    cache_dir = args.workdir / "cache"
    rows, outs = {}, {}
    for flip in (False, True):
        outs[flip] = args.workdir / f"report-{'flip' if flip else 'plain'}"
        stdout, seconds = run(["pipelines", "compare", "efficientnet_lite0", str(CIFAR), "--strategies",
                               args.strategies, "--limit-per-class", str(args.limit_per_class), "--image-size",
                               str(args.image_size), "--epochs", str(args.epochs), "--cache-dir", str(cache_dir),
                               "--out", str(outs[flip]), "--json", *(["--flip"] if flip else [])])
        rows[flip] = {row["strategy"]: row for row in json.loads(stdout)}
        print(f"compare{' --flip' if flip else ''}: {seconds:.1f} s whole process", flush=True)
    print(f"{'strategy':<9} {'plain':>7} {'--flip':>7} {'points':>7} {'only flip right':>15} {'only plain right':>16} "
          f"{'McNemar p':>10}  {'seconds plain/flip':>18}")
    for strategy, plain in rows[False].items():
        flipped = rows[True][strategy]
        gained, lost, p = paired(predictions_csv(plain, outs[False], cache_dir),
                                 predictions_csv(flipped, outs[True], cache_dir))
        print(f"{strategy:<9} {plain['test_accuracy']:>7.4f} {flipped['test_accuracy']:>7.4f} "
              f"{100 * (flipped['test_accuracy'] - plain['test_accuracy']):>+7.2f} {gained:>15} {lost:>16} "
              f"{p:>10.2g}  {plain['seconds']:>9.1f}/{flipped['seconds']:<8.1f}", flush=True)


if __name__ == "__main__":
    main()
