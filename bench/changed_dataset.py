"""What re-extracting a dataset costs after a few of its files changed: the whole set against only what changed.

    python bench/changed_dataset.py [--relabel 50] [--add 100] [--edit 10] [--workdir /tmp/changed_dataset]

Copies ../shared/datasets/cifar10 (all 60,000 images) into `--workdir` (mtimes kept), runs `python -m extract
efficientnet_lite0 COPY` as a user does, then changes the copy as a user fixing a dataset would: `--relabel` train
images moved into another class's folder, `--add` new train images (train images mirrored, under new names),
`--edit` train images rewritten mirrored. It runs the same command again and prints both runs' whole-process
times, how many rows the second took from the first entry and how many it computed, and checks the rows taken:
every one equal to the first entry's row of the same file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "datasets" / "cifar10"
sys.path.insert(0, str(REPO))

from extract.store import open_cache  # noqa: E402


def extract(data: Path, cache_dir: Path) -> tuple[Path, float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "extract", "efficientnet_lite0", str(data), "--cache-dir",
                             str(cache_dir)], cwd=REPO, capture_output=True, text=True, check=True)
    log = [line for line in result.stderr.splitlines() if "img/s]" not in line]
    return Path(result.stdout.strip()), time.perf_counter() - started, "\n".join(log)


def change(data: Path, relabel: int, add: int, edit: int) -> set[str]:
    """Spread over the classes: the i-th change takes class i % 10. Returns the ids of the edited images."""
    classes = sorted(p.name for p in (data / "train").iterdir())
    edited = set()
    for i in range(edit):
        target = sorted((data / "train" / classes[i % 10]).glob("*.jpg"))[-1 - i // 10]
        Image.open(target).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
        edited.add(str(target.relative_to(data)))
    for i in range(relabel):
        source = sorted((data / "train" / classes[i % 10]).glob("*.jpg"))[i // 10]
        source.rename(data / "train" / classes[(i + 1) % 10] / f"relabelled-{source.name}")
    for i in range(add):  # new pictures of the class: its train images mirrored
        source = sorted((data / "train" / classes[i % 10]).glob("*.jpg"))[100 + i // 10]
        Image.open(source).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(source.with_name(f"added-{source.name}"))
    return edited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relabel", type=int, default=50)
    parser.add_argument("--add", type=int, default=100)
    parser.add_argument("--edit", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/changed_dataset"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    data, cache_dir = args.workdir / "cifar10", args.workdir / "cache"
    shutil.copytree(CIFAR, data)  # copy2: mtimes kept, as a synced folder keeps them
    first, first_seconds, _ = extract(data, cache_dir)
    edited = change(data, args.relabel, args.add, args.edit)
    second, second_seconds, log = extract(data, cache_dir)
    print(log)
    old, new = open_cache(first), open_cache(second)
    taken = 0
    for split in ("train", "test"):
        old_features, _, old_ids = old.load(split)
        new_features, _, new_ids = new.load(split)
        row_of = {sample_id: row for row, sample_id in enumerate(old_ids)}
        same = [(row, row_of[i]) for row, i in enumerate(new_ids) if i in row_of and i not in edited]
        rows, old_rows = map(np.asarray, zip(*same, strict=True))
        assert np.array_equal(new_features[rows], old_features[old_rows]), f"{split}: a row taken differs"
        taken += len(same)
    print(f"\nfirst run (all {sum(len(old.load(s)[1]) for s in ('train', 'test'))} images): {first_seconds:.1f} s")
    print(f"after {args.relabel} relabelled, {args.add} added, {args.edit} edited: {second_seconds:.1f} s "
          f"({first_seconds / second_seconds:.1f}x less); {taken} rows equal to the first entry's")


if __name__ == "__main__":
    main()
