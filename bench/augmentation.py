"""How much the train crop should cut, for fine-tuning in few epochs: RandomResizedCrop's smallest area per run.

    python bench/augmentation.py [--train-per-class 1000] [--image-size 96] [--epochs 2] [--scales 0.25,0.64,1]
        [--modes lp-ft]

On the first N CIFAR-10 train images of each class from ../shared (all 10,000 test images), efficientnet_lite0,
it fine-tunes once per mode and smallest crop area (1: the whole image, flipped at random only), and prints the
best validation accuracy and the test accuracy of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipelines.finetune.data as data_module  # noqa: E402
from extract.datasets import resolve_dataset  # noqa: E402
from pipelines.finetune import FinetuneConfig, finetune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "cifar10"))
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--scales", default="0.25,0.64,1")
    parser.add_argument("--modes", default="lp-ft")
    parser.add_argument("--out", default="/tmp/augmentation")
    args = parser.parse_args()
    dataset = resolve_dataset(args.data, train_per_class=args.train_per_class)
    print(f"efficientnet_lite0, CIFAR-10, {args.train_per_class} train images a class, {len(dataset.splits['test'])} "
          f"test, {args.image_size} px, {args.epochs} epochs\n\n"
          "| mode | smallest crop area | best val (epoch) | test | seconds |\n|---|---:|---:|---:|---:|", flush=True)
    for mode in args.modes.split(","):
        for scale in (float(v) for v in args.scales.split(",")):
            data_module.SMALLEST_CROP_AREA = scale  # read by train_transform on each run
            started = time.perf_counter()
            result = finetune(FinetuneConfig(
                backbone="efficientnet_lite0", dataset=args.data, mode=mode, image_size=args.image_size,
                train_per_class=args.train_per_class, epochs=args.epochs, patience=args.epochs,
                out=f"{args.out}/{mode}-{scale:g}", cache_dir="cache"), dataset=dataset, log=lambda message: None)
            val = {row["epoch"]: row["val_accuracy"] for row in result.history}
            print(f"| {mode} | {scale:g} | {val[result.best_epoch]:.4f} ({result.best_epoch}) | "
                  f"{result.test_accuracy:.4f} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
