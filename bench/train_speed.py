"""Training speed per fine-tuning mode: eager against torch.compile of the model, on this machine.

    python bench/train_speed.py [--modes head,partial,full] [--image-size 96] [--batch-size 32] [--steps 12]
                                [--precision fp32]

On random uint8 images at the backbone's input (the loader's work left out: this times the steps), it runs
--steps training steps of `pipelines finetune`'s model for each mode (the same surgery, parameter groups, train
mode and optimiser), after 3 warm-up steps, eager and with the model compiled by torch.compile, and prints training
images/s and the speed-up. Compiling happens in the warm-up steps and is reported apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.preprocess import normalize  # noqa: E402
from extract.runtime import autocast  # noqa: E402
from pipelines.finetune import FinetuneConfig, prepare_model  # noqa: E402
from pipelines.finetune.schedule import build_optimizer  # noqa: E402
from pipelines.finetune.surgery import parameter_groups, set_train_mode  # noqa: E402

WARMUP_STEPS = 3


def images_per_second(mode: str, compiled: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(training images/s over the timed steps, seconds of the warm-up steps)."""
    torch.manual_seed(0)
    config = FinetuneConfig(backbone=args.backbone, mode=mode, image_size=args.image_size, batch_size=args.batch_size,
                            precision=args.precision)
    model, preprocess, head = prepare_model(config, 10)
    model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(parameter_groups(model, head, config), config)
    forward = torch.compile(model) if compiled else model
    loss_fn = nn.CrossEntropyLoss()
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.batch_size,))
    set_train_mode(model)

    def step() -> None:
        with autocast(args.precision, torch.device("cpu")):
            loss = loss_fn(forward(normalize(images, preprocess, torch.device("cpu"))), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        step()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.steps * args.batch_size / (time.perf_counter() - started), warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--modes", default="head,partial,full")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="autocast precision of the forward pass and loss, as `finetune --precision`")
    args = parser.parse_args()
    print(f"{args.backbone}, {args.image_size} px, batch {args.batch_size}, {args.precision}, {args.steps} timed "
          f"steps, torch {torch.__version__}, {torch.get_num_threads()} threads\n\n"
          "| mode | eager img/s | compiled img/s | speed-up | compile warm-up (s) |\n"
          "|---|---:|---:|---:|---:|", flush=True)
    for mode in args.modes.split(","):
        eager, _ = images_per_second(mode, False, args)
        compiled, warmup = images_per_second(mode, True, args)
        print(f"| {mode} | {eager:.1f} | {compiled:.1f} | {compiled / eager:.2f}x | {warmup:.0f} |", flush=True)


if __name__ == "__main__":
    main()
