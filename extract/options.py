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
    """--batch-size of the predict commands: images decoded and run through the network together."""
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per forward pass (default 32); memory stays flat however many images there are")
