"""Can part of efficientnet_lite0 run in bf16 and keep the linear probe within 0.3 points of fp32?

    python bench/mixed_precision.py [--images 10000] [--variants bf16,dw,dw+stem+head]

Each variant runs the backbone compiled, under bf16 autocast, with the named convolutions kept in fp32 (dw: the
depthwise ones, stem, head), over the same N CIFAR-10 images decoded beforehand (so images/s is the model alone). It
prints images/s, the per-image cosine to fp32 features and the move of bench/extract_speed.py's linear probe. As a
control, it also moves the probe with fp32 features times (1 + s x Gaussian noise): the probe's reading of an error
of known size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from extract_speed import pick_images, probe_accuracy, row_cosine  # noqa: E402

from extract.backbones import create_backbone  # noqa: E402
from extract.optimize import fold_batch_norms  # noqa: E402
from extract.preprocess import normalize, resize_and_crop  # noqa: E402
from extract.runtime import keep_freed_memory  # noqa: E402

BATCH = 64


class InFloat32(nn.Module):
    """A module run in fp32 inside a bf16 autocast region."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return self.inner(x.float())


def keep_in_float32(model: nn.Module, variant: str) -> int:
    parts = set(variant.split("+"))
    chosen = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d) and (
        ("dw" in parts and module.groups > 1 and module.groups == module.in_channels)
        or ("stem" in parts and name == "conv_stem") or ("head" in parts and name == "conv_head"))]
    for name in chosen:
        model.set_submodule(name, InFloat32(model.get_submodule(name)))
    return len(chosen)


def run(variant: str, pixels: torch.Tensor) -> tuple[np.ndarray, int, float]:
    """Features of every image, how many convolutions stayed fp32, images/s after compilation."""
    import torch._inductor.config

    torch._inductor.config.freezing = True
    backbone = create_backbone("efficientnet_lite0", "default", 224)
    model = backbone.model.eval().to(memory_format=torch.channels_last)
    fold_batch_norms(model)
    kept = keep_in_float32(model, variant) if variant not in ("fp32", "bf16") else 0

    def pooled(batch: torch.Tensor) -> torch.Tensor:
        return model.forward_features(normalize(batch, backbone.preprocess, torch.device("cpu"))).float().mean((2, 3))

    count = len(pixels)
    # whole batches of ordinary tensors, made outside inference mode: one compilation (see Extractor.features)
    padded = torch.cat([pixels, pixels.new_zeros(-count % BATCH, *pixels.shape[1:])])
    compiled, out = torch.compile(pooled, dynamic=False), []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant != "fp32"):
        compiled(padded[:BATCH])
        started = time.perf_counter()
        for start in range(0, count, BATCH):
            out.append(compiled(padded[start:start + BATCH]).numpy())
        rate = count / (time.perf_counter() - started)
    torch._dynamo.reset()
    return np.concatenate(out)[:count], kept, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--variants", default="bf16,dw,dw+stem+head")
    parser.add_argument("--noise", default="0.01,0.03", help="relative noise levels of the control")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "cifar10"))
    args = parser.parse_args()
    keep_freed_memory()  # as python -m extract does

    images = pick_images(Path(args.data), args.images)
    labels = np.asarray([label for _, label in images])
    preprocess = create_backbone("efficientnet_lite0", "default", 224).preprocess
    pixels = torch.stack([resize_and_crop(Image.open(path).convert("RGB"), preprocess) for path, _ in images])
    reference, _, rate = run("fp32", pixels)
    base = probe_accuracy(reference, labels)
    print(f"efficientnet_lite0, {len(images)} CIFAR-10 images, compiled, batch {BATCH}\n\n"
          "| variant | convolutions in fp32 | images/s | cosine to fp32 | probe | moved (points) |\n"
          f"|---|---:|---:|---:|---:|---:|\n| fp32 | all | {rate:.1f} | 1 | {base:.4f} | |", flush=True)
    for variant in args.variants.split(","):
        features, kept, rate = run(variant, pixels)
        probe = probe_accuracy(features, labels)
        print(f"| {variant} | {kept} | {rate:.1f} | {row_cosine(features, reference).mean():.5f} | {probe:.4f} | "
              f"{(probe - base) * 100:+.2f} |", flush=True)
    for scale in map(float, args.noise.split(",")):
        for seed in range(3):
            noise = np.random.default_rng(seed).standard_normal(reference.shape).astype(np.float32)
            noisy = reference * (1 + scale * noise)
            probe = probe_accuracy(noisy, labels)
            cosine = row_cosine(noisy, reference).mean()
            print(f"| control: fp32 x (1 + {scale} noise), seed {seed} | | | {cosine:.5f} | {probe:.4f} | "
                  f"{(probe - base) * 100:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
