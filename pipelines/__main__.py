"""python -m pipelines finetune|compare BACKBONE DATASET: fine-tune, or compare with frozen features."""

from __future__ import annotations

import argparse
import json
import sys

from extract.errors import run_cli
from extract.run import DEFAULT_CACHE_DIR
from pipelines.finetune import MODES, OPTIMIZERS, SCHEDULES, FinetuneConfig

EPILOG = """examples:
  python -m pipelines finetune efficientnet_lite0 examples/cifar10-mini --mode head --epochs 3 --image-size 96
  python -m pipelines finetune resnet18 path/to/photos --mode partial --unfreeze-from layer4.0
  python -m pipelines compare efficientnet_lite0 ../shared/datasets/cifar10 --limit-per-class 200 \\
      --image-size 96 --epochs 5 --out reports/cifar10-200

modes: head (new output layer only; batch-norm statistics frozen), partial (blocks from --unfreeze-from on,
default the last third), full (everything), scratch (same architecture, random init).
The pretrained part trains at --lr, the new output layer at lr x --head-lr-mult (default 10).
"""


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backbone", help="backbone name, as for python -m extract")
    parser.add_argument("dataset", help="dataset name or folder with train/ and test/, as for python -m extract")
    parser.add_argument("--weights", default=None, help="as for python -m extract (default: pretrained)")
    parser.add_argument("--unfreeze-from", default=None, metavar="BLOCK",
                        help="first block to train in --mode partial (an unknown name lists the blocks)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--limit-per-class", type=int, default=None, metavar="N")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="backbone learning rate (sgd 0.003, adamw 1e-4)")
    parser.add_argument("--head-lr-mult", type=float, default=10.0)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd (momentum 0.9) or adamw")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--patience", type=int, default=3, help="early stopping patience in epochs")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="of the train split, for early stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="training precision (mixed precision with autocast when not fp32)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tune = commands.add_parser("finetune", help="fine-tune a backbone on a dataset")
    add_training_arguments(tune)
    tune.add_argument("--mode", choices=MODES, default="full")
    tune.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    tune.add_argument("--out", default=None, help="run folder (default runs/BACKBONE-DATASET-MODE)")
    both = commands.add_parser("compare", help="frozen features + best head vs fine-tuning strategies")
    add_training_arguments(both)
    both.add_argument("--strategies", default=None, help="comma-separated subset of frozen,head,partial,full,scratch")
    both.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    both.add_argument("--out", default=None, help="report folder (default reports/BACKBONE-DATASET)")
    return parser


def config_from(args: argparse.Namespace) -> FinetuneConfig:
    keys = FinetuneConfig.__dataclass_fields__
    return FinetuneConfig(**{k: v for k, v in vars(args).items() if k in keys and v is not None})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    from pathlib import Path

    slug = Path(args.dataset.rstrip("/")).name or args.dataset
    if args.command == "finetune":
        from pipelines.finetune import finetune

        args.out = args.out or f"runs/{args.backbone}-{slug}-{args.mode}"
        result = finetune(config_from(args), resume=args.resume, log=log)
        summary = {k: v for k, v in result.to_dict().items() if k not in ("history", "test_predictions")}
        print(json.dumps(summary) if args.json else
              f"{result.strategy}: test accuracy {result.test_accuracy:.4f}, macro-F1 {result.macro_f1:.4f}, "
              f"best epoch {result.best_epoch}/{result.epochs_run}; run folder {result.out}")
        return 0

    from pipelines.compare import compare, parse_strategies
    from pipelines.report import markdown_table

    out = args.out or f"reports/{args.backbone}-{slug}"
    rows = compare(config_from(args), parse_strategies(args.strategies), args.cache_dir, out, log=log)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "test_predictions"} for r in rows]))
    else:
        print(markdown_table(rows))
        print(f"\nreport: {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
