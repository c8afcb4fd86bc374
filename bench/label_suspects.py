"""Does `classify suspects` find wrong labels? Labels flipped on purpose in a copy of a cache, then looked for.

    python bench/label_suspects.py CACHE_FILE [--flip 1000] [--seed 0]

Copies the cache, gives `--flip` train images picked at random another class's label (picked at random), and runs
`find_suspects` on the copy as `python -m classify suspects` does. Prints how many suspects it names, how many of the
flipped images are among them (recall), and how many of the first `--flip` suspects are flipped ones (precision at
that rank; picking at random would give the flipped share of the train split). The original cache's own suspects
are counted too: what the method names on labels as they came.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classify.suspects import find_suspects  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache_file", type=Path)
    parser.add_argument("--flip", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(shutil.copy(args.cache_file, Path(folder) / args.cache_file.name))
        rng = np.random.default_rng(args.seed)
        with h5py.File(copy, "a") as file:
            labels = file["train/labels"][...]
            flipped = rng.choice(len(labels), args.flip, replace=False)
            n_classes = int(labels.max()) + 1
            labels[flipped] = (labels[flipped] + rng.integers(1, n_classes, args.flip)) % n_classes
            file["train/labels"][...] = labels
        clean = find_suspects(args.cache_file, log=lambda m: None)
        noisy = find_suspects(copy, log=lambda m: None)
    found = np.isin(flipped, noisy.rows)
    top = np.isin(noisy.rows[:args.flip], flipped)
    print(f"{len(labels)} train images, {args.flip} labels flipped ({args.flip / len(labels):.1%})")
    print(f"as they came: {len(clean.rows)} suspects ({len(clean.rows) / len(labels):.1%}), {clean.seconds:.1f} s, "
          f"{clean.best_params}")
    print(f"flipped: {len(noisy.rows)} suspects ({len(noisy.rows) / len(labels):.1%}), {noisy.seconds:.1f} s, "
          f"{noisy.best_params}")
    print(f"recall: {found.sum()} of the {args.flip} flipped are suspects ({found.mean():.1%})")
    print(f"precision of the first {args.flip} suspects: {top.sum()} flipped ({top.mean():.1%}; at random "
          f"{args.flip / len(labels):.1%})")
    ranks = np.flatnonzero(np.isin(noisy.rows, flipped))
    print(f"the flipped among the suspects sit at ranks (median, 90th percentile): {np.median(ranks):.0f}, "
          f"{np.percentile(ranks, 90):.0f}")


if __name__ == "__main__":
    main()
