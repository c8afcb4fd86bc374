"""Image folders for calibrating `python -m pipelines advise`: datasets far from ImageNet, made offline.

    python bench/calibration_datasets.py OUT_DIR [--per-class 1000]

writes OUT_DIR/cifar10-shuffled (CIFAR-10 from ../shared with one fixed permutation of pixel positions: the labels
and colour statistics survive, object shapes do not) and OUT_DIR/gratings (sinusoidal gratings, ten orientation
classes, random frequency and phase, noise: no object in sight). scikit-learn's digits is built in (`digits`);
CIFAR-10 itself (../shared) is the similar reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"
TEST_FRACTION = 0.2


def shuffled_cifar(out: Path, per_class: int) -> None:
    permutation = np.random.default_rng(0).permutation(32 * 32)
    for split, count in (("train", per_class), ("test", max(10, int(per_class * TEST_FRACTION)))):
        for class_dir in sorted((CIFAR / split).iterdir()):
            target = out / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(class_dir.glob("*.jpg"))[:count]:
                pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)[permutation].reshape(32, 32, 3)
                Image.fromarray(pixels).save(target / f"{path.stem}.png")


def gratings(out: Path, per_class: int, size: int = 64, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", per_class), ("test", max(10, int(per_class * TEST_FRACTION)))):
        for label in range(classes):
            target = out / split / f"orientation{label * 180 // classes:03d}"
            target.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                angle = np.pi * (label + rng.uniform(-0.3, 0.3)) / classes
                frequency, phase = rng.uniform(3, 9), rng.uniform(0, 2 * np.pi)
                wave = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
                image = 127.5 + 90 * wave + rng.normal(0, 30, wave.shape)
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(target / f"{index:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=1000, help="train images per class (test: a fifth)")
    args = parser.parse_args()
    out = Path(args.out)
    shuffled_cifar(out / "cifar10-shuffled", args.per_class)
    gratings(out / "gratings", args.per_class)
    print(f"wrote {out}/cifar10-shuffled and {out}/gratings")


if __name__ == "__main__":
    main()
