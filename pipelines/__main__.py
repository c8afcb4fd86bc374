"""python -m pipelines advise|finetune|compare|predict: which strategy suits a dataset; fine-tuning; frozen vs
fine-tuned; the fine-tuned network on new images."""

from __future__ import annotations

import argparse
import json
import sys

from extract.backbones import DEFAULT_BACKBONE
from extract.datasets import CSV_SUFFIXES
from extract.errors import exit_cli
from extract.features import ExtractionSettings
from extract.options import (
    add_data_arguments,
    add_device_argument,
    add_json_argument,
    add_predict_batch_argument,
    add_search_arguments,
    add_skip_bad_argument,
)
from extract.paths import name_in_paths
from extract.runtime import PRECISIONS, keep_freed_memory
from extract.store import DEFAULT_CACHE_DIR
from pipelines.advise import (
    DEFAULT_BUDGET_MINUTES,
    FINE_TUNE_MIN_PER_CLASS,
    FINE_TUNE_MIN_PROBE_ERROR,
    MIN_TOP_LAYER_MARGIN,
    PROBE_PER_CLASS,
)
from pipelines.budget import DEFAULT_EPOCHS
from pipelines.compare import DEFAULT_STRATEGIES, STRATEGIES
from pipelines.finetune import MODES, OPTIMIZERS, SCHEDULES, FinetuneConfig

EPILOG = """examples:
  python -m pipelines advise examples/cifar10-mini            measure size and ImageNet similarity, recommend
  python -m pipelines advise digits --run                     ... and run the recommended strategy
  python -m pipelines finetune efficientnet_lite0 examples/cifar10-mini --mode head --epochs 3 --image-size 96
  python -m pipelines finetune resnet18 path/to/photos --mode partial --unfreeze-from layer4.0
  python -m pipelines compare efficientnet_lite0 ../shared/datasets/cifar10 --limit-per-class 200 \\
      --image-size 96 --epochs 5 --out reports/cifar10-200
  python -m pipelines compare efficientnet_lite0 ../shared/datasets/cifar10 --strategies frozen,lp-ft --flip \\
      --train-per-class 100,1000,5000 --image-size 96 --epochs 3 --out reports/cifar10-96px   the learning curve
  python -m pipelines predict runs/efficientnet_lite0-cifar10-mini-head photo1.jpg photos/   the tuned network

modes: head (new output layer only; batch-norm statistics frozen), partial (blocks from --unfreeze-from on,
default the last third), full (everything), lp-ft (the output layer starts as the linear probe of the cached
features, then everything, or the blocks from --unfreeze-from on, trains), scratch (same architecture, random init).
The pretrained part trains at --lr, the new output layer at lr x --head-lr-mult (default 10; lp-ft: x1).
Guide: docs/finetune.md (fine-tuning, compare, LP-FT) and docs/advisor.md (advise).
"""


ADVISE_HELP = f"""Which strategy should run on a dataset: the cheapest one expected within about a point of the best,
within a time budget on this machine.

measured on the first --probe-per-class train images of each class (features cached):
  top-layer margin: linear-probe CV accuracy of the penultimate layer minus that of the best earlier stage:
    from {MIN_TOP_LAYER_MARGIN:+g}, frozen top-layer features (frozen); below, the layer chosen by CV (frozen-layers)
  frozen probe error: 1 - the penultimate probe's CV accuracy: fine-tuning from the linear probe (lp-ft) is expected
    to pay from {FINE_TUNE_MIN_PROBE_ERROR} with {FINE_TUNE_MIN_PER_CLASS} or more train images in the smallest class,
    where the margin passes (lp-ft starts from the top layer's probe)
lp-ft is recommended where it is expected to pay and fits --budget; every strategy's time here is printed, from
speeds measured on this machine, with what it gained where the calibration's rule said the same.
Thresholds, the calibration and its check on left-out dataset families: docs/advisor.md.
"""


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backbone", help="backbone name, as for python -m extract")
    parser.add_argument("dataset", help="dataset name or image folder, as for python -m extract")
    parser.add_argument("--weights", default=None, help="as for python -m extract (default: pretrained)")
    add_skip_bad_argument(parser)
    parser.add_argument("--unfreeze-from", default=None, metavar="BLOCK",
                        help="first block to train in --mode partial (an unknown name lists the blocks)")
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=int, default=10, help="at most this many (default 10; see --patience)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--lr", type=float, default=None, help="backbone learning rate (sgd 0.003, adamw 1e-4)")
    parser.add_argument("--head-lr-mult", type=float, default=10.0,
                        help="the new classifier's learning rate as a multiple of --lr (default 10; --mode head and "
                             "lp-ft train it at --lr)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd (momentum 0.9) or adamw")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                        help="learning-rate decay after the warm-up (default cosine)")
    parser.add_argument("--warmup-epochs", type=float, default=1.0,
                        help="linear learning-rate warm-up, in epochs (default 1; fractions allowed; 0: none)")
    parser.add_argument("--patience", type=int, default=3,
                        help="stop after this many epochs without a better validation accuracy (balanced accuracy "
                             "with --balanced; default 3)")
    parser.add_argument("--balanced", action="store_true",
                        help="for uneven classes: weight each class by the inverse of its train count in the loss "
                             "(and in the frozen heads), choose checkpoints and heads by balanced accuracy (the mean "
                             "of the classes' recalls)")
    parser.add_argument("--flip", action="store_true",
                        help="score every validation and test image (and, with predict, every new one) by the mean "
                             "of its logits and its left-right mirror image's; the frozen strategies extract with "
                             "extract --flip (features averaged the same way)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="of the train split, for early stopping")
    parser.add_argument("--seed", type=int, default=0,
                        help="for the validation split, initialisation and shuffling (default 0)")
    add_device_argument(parser)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="training precision (mixed precision with autocast when not fp32); auto picks bf16 where "
                             "the CPU or GPU computes it natively, as for python -m extract, and the run records which")
    parser.add_argument("--workers", type=int, default=None,
                        help="image-decoding processes (default: none on a CPU of 2 cores or fewer, else cores - 1, "
                             "up to 8; with a GPU every core, up to 8)")
    add_json_argument(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    advise = commands.add_parser(
        "advise", help="measure a dataset's size and similarity to ImageNet; recommend (and --run) a strategy",
        description=ADVISE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    advise.add_argument("dataset", help="dataset name or image folder, as for python -m extract")
    advise.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        help=f"whose features measure the similarity, as for python -m extract (default "
                             f"{DEFAULT_BACKBONE})")
    advise.add_argument("--probe-per-class", type=int, default=PROBE_PER_CLASS, metavar="N",
                        help=f"train images per class whose features measure similarity (default {PROBE_PER_CLASS})")
    advise.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="where the probe's features are cached")
    add_data_arguments(advise, limit_help="advise on (and --run on) the first N images of each class only")
    advise.add_argument("--workers", type=int, default=None,
                        help="image-decoding processes (default: as for python -m extract)")
    advise.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MINUTES, metavar="MINUTES",
                        help="the longest run to recommend, in minutes on this machine (default "
                             f"{DEFAULT_BUDGET_MINUTES:g}: what one waits for without leaving the desk)")
    advise.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"fine-tuning epochs, for its time and for --run (default {DEFAULT_EPOCHS}, as compare)")
    advise.add_argument("--run", action="store_true", help="run the recommended strategy (python -m pipelines "
                                                             "compare with that strategy) and write its report")
    advise.add_argument("--out", default=None,
                        help="report folder for --run (default reports/BACKBONE-DATASET-advised)")
    add_json_argument(advise)
    add_skip_bad_argument(advise)
    tune = commands.add_parser("finetune", help="fine-tune a backbone on a dataset")
    add_training_arguments(tune)
    tune.add_argument("--mode", choices=MODES, default="full",
                      help="what trains beside the new output layer: head (nothing), partial (the blocks from "
                           "--unfreeze-from on; default the last third), full (everything; the default), lp-ft "
                           "(everything, the output layer starting as the linear probe of the cached features), "
                           "scratch (everything, from random weights)")
    tune.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                      help="lp-ft: where the features its probe is fitted on are cached (default: cache/)")
    tune.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    tune.add_argument("--out", default=None, help="run folder (default runs/BACKBONE-DATASET-MODE)")
    both = commands.add_parser("compare", help="frozen features + best head vs fine-tuning strategies")
    add_training_arguments(both)
    both.add_argument("--strategies", default=None,
                      help=f"comma-separated subset of {','.join(STRATEGIES)} (default {','.join(DEFAULT_STRATEGIES)})")
    both.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                      help="where the frozen features are cached (default: cache/)")
    both.add_argument("--out", default=None, help="report folder (default reports/BACKBONE-DATASET)")
    both.add_argument("--train-per-class", dest="train_sizes", default=None, metavar="N[,N...]",
                      help="train on the first N images of each class, test on the whole test split; several sizes "
                           "(50,200,1000) run the comparison at each into OUT/train-N/ and draw the learning curve "
                           "in OUT/report.md")
    add_search_arguments(both, "parallel fits of the frozen strategies' heads (default -1: all cores)")
    both.add_argument("--resume", action="store_true",
                      help="read back the strategies OUT already holds and continue an interrupted one from its last "
                           "checkpoint")
    predict = commands.add_parser("predict", help="classify image files with a fine-tuned network",
                                  description="Prints PATH<TAB>CLASS<TAB>PROBABILITY per image, in order, from the "
                                              "best checkpoint of a finished finetune run (its --out folder), the "
                                              "images resized, cropped and normalised as its test split was.")
    predict.add_argument("run", help="a finetune run folder (runs/BACKBONE-DATASET-MODE by default), or a compare "
                                     "report's strategy folder (reports/.../partial)")
    predict.add_argument("images", nargs="+", help="image files, or folders (every image under them)")
    add_device_argument(predict)
    add_predict_batch_argument(predict)
    add_json_argument(predict)
    predict.add_argument("--min-probability", type=float, default=None, metavar="P",
                         help="print 'unsure' instead of the class where its probability is below P, for a person "
                              "to look at")
    add_skip_bad_argument(predict)
    return parser


def config_from(args: argparse.Namespace) -> FinetuneConfig:
    keys = FinetuneConfig.__dataclass_fields__
    return FinetuneConfig(**{k: v for k, v in vars(args).items() if k in keys and v is not None})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # a process-wide setting: the CLI's to make, not the library's
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    if args.command == "predict":
        from classify.predict import print_predictions
        from pipelines.predict import predict_finetuned

        print_predictions(predict_finetuned(args.run, args.images, device=args.device, batch_size=args.batch_size,
                                            skip_bad=args.skip_bad, min_probability=args.min_probability,
                                            progress=True, log=log, workers=args.workers), args.min_probability,
                          args.json)
        return 0
    from pathlib import Path

    dataset = Path(args.dataset.rstrip("/"))
    slug = (dataset.stem if dataset.suffix.lower() in CSV_SUFFIXES else dataset.name) or args.dataset
    if args.command == "advise":
        return run_advise(args, slug, log)
    if args.command == "finetune":
        from extract.distributed import shutdown, world
        from pipelines.finetune import finetune

        args.out = args.out or f"runs/{name_in_paths(args.backbone)}-{slug}-{args.mode}"
        try:
            result = finetune(config_from(args), resume=args.resume, log=log, progress=True)
            if world().is_main:
                summary = {k: v for k, v in result.to_dict().items() if k not in ("history", "test_predictions")}
                print(json.dumps(summary) if args.json else
                      f"{result.strategy}: test accuracy {result.test_accuracy:.4f}, balanced accuracy "
                      f"{result.test_balanced_accuracy:.4f}, macro-F1 "
                      f"{result.macro_f1:.4f}, best epoch {result.best_epoch}/{result.epochs_run}; run folder "
                      f"{result.out}")
        finally:
            shutdown()
        return 0

    from pipelines.compare import compare, parse_strategies
    from pipelines.curve import learning_curve, parse_sizes, results, summary
    from pipelines.report import markdown_table, without_predictions

    out = args.out or f"reports/{name_in_paths(args.backbone)}-{slug}"
    config, strategies = config_from(args), parse_strategies(args.strategies)
    sizes = parse_sizes(args.train_sizes) if args.train_sizes else []
    if len(sizes) > 1:
        points = learning_curve(config, strategies, sizes, args.cache_dir, out, log=log, resume=args.resume,
                                progress=True, cv=args.cv, n_jobs=args.n_jobs)
        print(json.dumps(results(points)) if args.json else "\n".join(summary(points)) + f"\n\nreport: {out}/report.md")
        return 0
    config.train_per_class = sizes[0] if sizes else None
    rows = compare(config, strategies, args.cache_dir, out, log=log, resume=args.resume, progress=True, cv=args.cv,
                   n_jobs=args.n_jobs)
    if args.json:
        print(json.dumps([without_predictions(row) for row in rows]))
    else:
        print(markdown_table(rows))
        print(f"\nreport: {out}/report.md")
    return 0


def run_advise(args: argparse.Namespace, slug: str, log) -> int:
    from pipelines.advise import advise, format_advice
    from pipelines.compare import compare
    from pipelines.report import without_predictions

    settings = ExtractionSettings(workers=args.workers)
    advice = advise(args.dataset, args.backbone, args.probe_per_class, args.image_size, args.cache_dir,
                    args.data_root, args.limit_per_class, settings, log=log, budget_minutes=args.budget,
                    epochs=args.epochs, progress=True, skip_bad=args.skip_bad)
    output = advice.to_dict()
    if not args.json:
        print(format_advice(advice))
    if args.run:
        out = args.out or f"reports/{name_in_paths(args.backbone)}-{slug}-advised"
        config = FinetuneConfig(backbone=args.backbone, dataset=args.dataset, image_size=args.image_size,
                                limit_per_class=args.limit_per_class, data_root=args.data_root, workers=args.workers,
                                epochs=args.epochs, skip_bad=args.skip_bad)
        (row,) = compare(config, [advice.strategy], args.cache_dir, out, log=log, progress=True)
        output["result"] = without_predictions(row)
        if not args.json:
            print(f"\n{advice.strategy}: test accuracy {row['test_accuracy']:.4f} ({row['detail']}); "
                  f"report: {out}/report.md")
    if args.json:
        print(json.dumps(output))
    return 0


if __name__ == "__main__":
    exit_cli(main)
