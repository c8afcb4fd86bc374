"""Every registered backbone through the extractor: does it build, read every layer, and compile to the same features?

    python bench/architectures.py [NAME ...] [--sizes native,96] [--compile]

For each backbone (default: all of `python -m extract --list`; timm/ARCH names too) and input size, with random
weights (offline; the architecture is what is checked): build it, read `--layers all` eagerly from 4 random images,
and check the features are finite and as wide as the layout says; for a timm model (its batch norms given random
statistics), compare the penultimate features with timm's own `forward_head(pre_logits=True)` of the model as timm
built it. `--compile` also compiles it as `--compile on` does and prints the
largest difference to the eager features, relative to their largest value. A size the architecture cannot take is
reported as the one-line error users get. All 83 backbones at both sizes, eagerly: 4.5 minutes on 2 cores;
compiling adds 3-45 s per backbone.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract.backbones import TIMM_PREFIX, create_backbone, list_backbones  # noqa: E402
from extract.errors import UsageError  # noqa: E402
from extract.features import ExtractionSettings, Extractor  # noqa: E402
from extract.preprocess import normalize  # noqa: E402


def check(name: str, size: int | None, compile_too: bool) -> str:
    weights = "default" if name.startswith("efficientnet_lite") else "none"
    try:
        backbone = create_backbone(name, weights, size)
        if name.startswith(TIMM_PREFIX):
            random_norm_statistics(backbone.model)  # so that folding them into convolutions is put to the test
        extractor = Extractor(backbone, "avg", ExtractionSettings(compile="off", batch_size=4), layers="all")
    except UsageError as error:
        return f"refused: {error}"
    crop = backbone.preprocess.crop_size
    images = torch.randint(0, 256, (4, 3, crop, crop), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    eager = extractor.batch_features(images)
    if not (np.isfinite(eager).all() and eager.shape == (4, extractor.feature_dim())):
        return f"FAILED: features {eager.shape}, finite {np.isfinite(eager).all()}"
    result = f"ok, {crop} px, {', '.join(layer for layer, _, _ in extractor.layout)}: {eager.shape[1]} columns"
    if name.startswith(TIMM_PREFIX):
        start, stop = next((start, stop) for layer, start, stop in extractor.layout if layer == "penultimate")
        result += f"; {against_pre_logits(name, size, images, eager[:, start:stop])}"
    if compile_too:
        compiled = Extractor(create_backbone(name, weights, size), "avg",
                             ExtractionSettings(compile="on", batch_size=4), layers="all")
        said = compiled.compile_if_it_pays(len(images))
        difference = np.abs(compiled.batch_features(images) - eager).max() / np.abs(eager).max()
        result += f"; compiled: {said.split(' with ')[0]}, difference {difference:.1e}"
    return result


def random_norm_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Seeded batch-norm statistics: a fresh model's (mean 0, variance 1) fold trivially. Mild ones: with variances
    of 0.5 to 2, EfficientNetV2-S at 300 px amplifies float32 rounding to 3% (timm's own model, fp32 against fp64)."""
    generator = torch.Generator().manual_seed(0)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.running_var is not None):
        norm.running_mean.uniform_(-0.1, 0.1, generator=generator)
        norm.running_var.uniform_(0.8, 1.25, generator=generator)
    return model


def against_pre_logits(name: str, size: int | None, images: torch.Tensor, ours: np.ndarray) -> str:
    """The extractor's penultimate features (norms folded, 'same' padding made static, read by hooks) against timm's
    own `forward_head(pre_logits=True)` of the same model left as timm built it, with the same norm statistics."""
    backbone = create_backbone(name, "none", size)
    model = random_norm_statistics(backbone.model)
    with torch.no_grad():
        pixels = normalize(images, backbone.preprocess, torch.device("cpu"))
        theirs = model.forward_head(model.forward_features(pixels), pre_logits=True).float().numpy()
    if ours.shape != theirs.shape:
        return f"penultimate {ours.shape[1]} wide, timm's pre-logits {theirs.shape[1]}"
    difference = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    return f"{'= timm' if difference < 1e-4 else 'differs from timm'}'s pre-logits to {difference:.0e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="backbones (default: every registered one)")
    parser.add_argument("--sizes", default="native,96", help="input sizes: 'native' (the weights' own) or pixels")
    parser.add_argument("--compile", action="store_true", help="also compile each and compare with eager")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # torchvision's deprecation notices, once per model
    sizes = [None if size == "native" else int(size) for size in args.sizes.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| backbone | size | result |\n|---|---|---|")
    failures = 0
    for name in args.names or list_backbones():
        for size in sizes:
            started = time.perf_counter()
            try:
                result = check(name, size, args.compile)
            except Exception as error:  # noqa: BLE001 - the point is to list what breaks, and go on
                result = f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            failures += result.startswith("FAILED")
            print(f"| {name} | {size or 'native'} | {result} ({time.perf_counter() - started:.1f} s) |", flush=True)
    print(f"\n{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
