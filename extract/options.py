"""Command-line options that mean the same in extract, classify and pipelines: defined once, with one help text."""

from __future__ import annotations

import argparse

LIMIT_PER_CLASS_HELP = "use only the first N images of each class in each split (quick runs)"


def add_data_arguments(parser: argparse.ArgumentParser, limit_help: str = LIMIT_PER_CLASS_HELP) -> None:
    """Which images, at what size: --image-size, --limit-per-class and --data-root."""
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size in pixels (default: the weights' own, e.g. 224)")
    parser.add_argument("--limit-per-class", type=int, default=None, metavar="N", help=limit_help)
    parser.add_argument("--data-root", default="data",
                        help="where torchvision datasets are downloaded (default: data/)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")


def add_predict_batch_argument(parser: argparse.ArgumentParser) -> None:
    """--batch-size and --workers of the predict commands: images decoded and run through the network together."""
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per forward pass (default 32); memory stays flat however many images there are")
    parser.add_argument("--workers", type=int, default=0,
                        help="threads decoding the next batch while the network runs this one (default 0: in turn; "
                             "for large photos on several cores)")


JSON_HELP = "print the result as JSON on stdout (predict: one object per image, a line each), the log on stderr"


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def add_search_arguments(parser: argparse.ArgumentParser, n_jobs_help: str = "parallel fits (default -1: all cores)"
                         ) -> None:
    """--cv and --n-jobs of every command that searches a head's parameters by cross-validation."""
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds on the train split (default 3)")
    parser.add_argument("--n-jobs", type=int, default=-1, help=n_jobs_help)


def add_skip_bad_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable images, each named on stderr (extract also records them in the "
                             "cache file), instead of stopping at the first")
