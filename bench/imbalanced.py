"""What `classify --balanced` does for uneven classes: CIFAR-10 with a long tail, as photo folders often have.

    python bench/imbalanced.py [--ratios 3,10,100] [--heads logreg,linearsvm,svm] [--workdir /tmp/imbalanced]

Builds a folder of links into ../shared/datasets/cifar10: per class (in the cache's order, airplane first) train
images falling geometrically from 5,000 to 5,000 / RATIO (CIFAR-10-LT, as Cui et al. 2019 made it), and all 10,000
test images. It runs `python -m extract efficientnet_lite0` on it as a user does, the smallest ratio first; each
next ratio removes train links and extracts again, taking the rows of the files left from the entry before. Then
`python -m classify HEAD --json`, without and with `--balanced`.

Per ratio and head it prints, from the head's predictions.csv: on the whole test split (1,000 of each class, so
accuracy and balanced accuracy are one number) the accuracy and the recall of the rarest class; and on a test split
with the train split's long tail (the first 1,000 / RATIO^(k/9) test images of class k), accuracy and balanced
accuracy. Which of the two a user wants decides whether --balanced helps: it trades accuracy on the large classes
for recall on the small ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "datasets" / "cifar10"


def tail_counts(largest: int, ratio: float, classes: int) -> list[int]:
    return [int(round(largest * ratio ** (-k / (classes - 1)))) for k in range(classes)]


def link_dataset(folder: Path, ratio: float, largest: int = 5000) -> list[int]:
    """Train links per class down to the long tail's counts (each class's files in name order, so a larger ratio
    keeps a subset of a smaller one's); test links to every test image."""
    classes = sorted(p.name for p in (CIFAR / "train").iterdir() if p.is_dir())
    counts = tail_counts(largest, ratio, len(classes))
    for split in ("train", "test"):
        for k, name in enumerate(classes):
            target = folder / split / name
            target.mkdir(parents=True, exist_ok=True)
            files = sorted((CIFAR / split / name).glob("*.jpg"))
            wanted = {f.name for f in (files[:counts[k]] if split == "train" else files)}
            for link in target.iterdir():
                if link.name not in wanted:
                    link.unlink()
            for file in files:
                if file.name in wanted and not (target / file.name).exists():
                    (target / file.name).symlink_to(file)
    return counts


def run(command: list[str]) -> tuple[str, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return result.stdout, time.perf_counter() - started


def scores(predictions_csv: str, class_names: list[str], ratio: float) -> dict[str, float]:
    with open(predictions_csv) as file:
        rows = list(csv.DictReader(file))
    true = np.array([class_names.index(row["true"]) for row in rows])
    right = np.array([row["true"] == row["predicted"] for row in rows])
    tail = np.zeros(len(rows), dtype=bool)
    for k, count in enumerate(tail_counts(1000, ratio, len(class_names))):
        tail[np.flatnonzero(true == k)[:count]] = True
    recalls = [right[tail & (true == k)].mean() for k in range(len(class_names))]
    return {"balanced test": right.mean(), "rarest recall": right[true == len(class_names) - 1].mean(),
            "tail test": right[tail].mean(), "tail balanced": float(np.mean(recalls))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", default="3,10,100")
    parser.add_argument("--heads", default="logreg,linearsvm,svm")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imbalanced"))
    args = parser.parse_args()
    data, cache_dir = args.workdir / "cifar10-lt", args.workdir / "cache"
    print(f"{'ratio':>5} {'head':<10} {'--balanced':<10} {'balanced test':>13} {'rarest recall':>13} "
          f"{'tail test':>9} {'tail balanced':>13} {'head s':>7}")
    for ratio in sorted(float(r) for r in args.ratios.split(",")):
        counts = link_dataset(data, ratio)
        out, seconds = run(["extract", "efficientnet_lite0", str(data), "--cache-dir", str(cache_dir)])
        cache = out.strip()
        print(f"ratio {ratio:g}: train {counts[0]} ... {counts[-1]} per class ({sum(counts)} images); "
              f"extract {seconds:.1f} s -> {Path(cache).name}", flush=True)
        for head in args.heads.split(","):
            for balanced in (False, True):
                out, seconds = run(["classify", head, cache, "--json", *(["--balanced"] if balanced else [])])
                result = json.loads(out)
                class_names = json.loads(Path(result["model_file"]).with_suffix(".json").read_text())["class_names"]
                score = scores(result["predictions_csv"], class_names, ratio)
                print(f"{ratio:>5g} {head:<10} {'yes' if balanced else 'no':<10} {score['balanced test']:>13.4f} "
                      f"{score['rarest recall']:>13.3f} {score['tail test']:>9.4f} {score['tail balanced']:>13.4f} "
                      f"{seconds:>7.1f}  {result['best_params']}", flush=True)


if __name__ == "__main__":
    main()
