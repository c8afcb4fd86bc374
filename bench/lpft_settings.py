"""LP-FT's settings measured: learning rate and batch-norm statistics, against plain full fine-tuning.

    python bench/lpft_settings.py [--per-class 100] [--image-size 96] [--epochs 3] [--lrs 0.003,0.0003]

On the first N CIFAR-10 images of each class (train and test) from ../shared, efficientnet_lite0, it runs
`full` (lr 0.003, head x10) and `lp-ft` at each learning rate, with the batch norms' running statistics kept (the
default) and with batch statistics in training (as `full` does), and prints epoch 0 (the probe), the best
validation accuracy and the test accuracy of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipelines.finetune.trainer as trainer_module  # noqa: E402
from extract.datasets import resolve_dataset  # noqa: E402
from pipelines.finetune import FinetuneConfig, finetune  # noqa: E402
from pipelines.finetune.surgery import set_train_mode  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "cifar10"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrs", default="0.003,0.0003")
    parser.add_argument("--out", default="/tmp/lpft-settings")
    args = parser.parse_args()
    dataset = resolve_dataset(args.data, limit_per_class=args.per_class)
    common = dict(backbone="efficientnet_lite0", dataset=args.data, image_size=args.image_size,
                  limit_per_class=args.per_class, epochs=args.epochs, patience=args.epochs,
                  cache_dir=f"{args.out}/cache")
    runs = [("full", "full, lr 0.003", {}, False)]
    for lr in (float(v) for v in args.lrs.split(",")):
        runs += [(f"lp-ft-{lr:g}", f"lp-ft, lr {lr:g}, running statistics", {"lr": lr}, False),
                 (f"lp-ft-{lr:g}-batch", f"lp-ft, lr {lr:g}, batch statistics", {"lr": lr}, True)]
    print(f"efficientnet_lite0, CIFAR-10 {args.per_class} a class (train and test), {args.image_size} px, "
          f"{args.epochs} epochs\n\n| run | epoch 0 val | best val (epoch) | test | seconds |\n"
          "|---|---:|---:|---:|---:|", flush=True)
    for name, label, extra, batch_statistics in runs:
        mode = "full" if name == "full" else "lp-ft"
        trainer_module.set_train_mode = (lambda model, keep=False: set_train_mode(model)) if batch_statistics \
            else set_train_mode
        started = time.perf_counter()
        result = finetune(FinetuneConfig(mode=mode, out=f"{args.out}/{name}", **common, **extra),
                          dataset=dataset, log=lambda message: None)
        rows = {row["epoch"]: row["val_accuracy"] for row in result.history}
        print(f"| {label} | {rows.get(0, float('nan')):.4f} | {rows[result.best_epoch]:.4f} ({result.best_epoch}) | "
              f"{result.test_accuracy:.4f} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
