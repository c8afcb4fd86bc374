"""What `pipelines compare --balanced` does for uneven classes: frozen heads and fine-tuning on a CIFAR-10 long tail.

    python bench/imbalanced_finetune.py [--largest 500] [--ratio 10] [--strategies frozen,head,partial]
        [--image-size 96] [--epochs 8] [--workdir /tmp/imbalanced-finetune]

Builds the long-tailed folder of bench/imbalanced.py (train images per class falling geometrically from --largest to
--largest / --ratio, all 10,000 test images) and runs `python -m pipelines compare` on it as a user does, without
and with `--balanced`. Per strategy it prints, from the strategy's predictions.csv, the same four numbers as
bench/imbalanced.py: accuracy on the whole test split (1,000 a class, so also its balanced accuracy), the rarest
class's recall, and accuracy and balanced accuracy on a test split cut to the train split's tail.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imbalanced import link_dataset, run, scores


def predictions_csv(row: dict, out: Path, cache_dir: Path) -> Path:
    """Where the strategy's test predictions are: the fine-tuning run folder, or beside the frozen head's cache."""
    if "cache_file" not in row:
        return out / row["strategy"] / "predictions.csv"
    head = row["detail"].split()[0]
    return cache_dir / f"{Path(row['cache_file']).stem}.{head}.predictions.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--largest", type=int, default=500)
    parser.add_argument("--ratio", type=float, default=10)
    parser.add_argument("--strategies", default="frozen,head,partial")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imbalanced-finetune"))
    args = parser.parse_args()
    data, cache_dir = args.workdir / "cifar10-lt", args.workdir / "cache"
    counts = link_dataset(data, args.ratio, args.largest)
    class_names = sorted(p.name for p in (data / "train").iterdir())
    print(f"train {counts[0]} ... {counts[-1]} images per class ({sum(counts)} images), 10,000 test images; "
          f"efficientnet_lite0 at {args.image_size} px, up to {args.epochs} epochs")
    print(f"{'strategy':<9} {'--balanced':<10} {'balanced test':>13} {'rarest recall':>13} {'tail test':>9} "
          f"{'tail balanced':>13} {'seconds':>8}  detail")
    for balanced in (False, True):
        out = args.workdir / f"report-{'balanced' if balanced else 'plain'}"
        stdout, _ = run(["pipelines", "compare", "efficientnet_lite0", str(data), "--strategies", args.strategies,
                         "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--cache-dir",
                         str(cache_dir), "--out", str(out), "--json", *(["--balanced"] if balanced else [])])
        for row in json.loads(stdout):
            score = scores(str(predictions_csv(row, out, cache_dir)), class_names, args.ratio)
            print(f"{row['strategy']:<9} {'yes' if balanced else 'no':<10} {score['balanced test']:>13.4f} "
                  f"{score['rarest recall']:>13.3f} {score['tail test']:>9.4f} {score['tail balanced']:>13.4f} "
                  f"{row['seconds']:>8.1f}  {row['detail']}", flush=True)


if __name__ == "__main__":
    main()
