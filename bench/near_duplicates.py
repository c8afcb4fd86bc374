"""How well feature similarity finds near-copies: made ones among real images, and CIFAR-10's own.

    python bench/near_duplicates.py [--per-class 200] [--copies-per-class 20] [--full-cache CACHE_FILE]

Reads `--per-class` CIFAR-10 train images of each class (../shared/datasets/cifar10) as a train split, and as test
images: near-copies of `--copies-per-class` of them per class, made one way at a time (re-encoded as JPEG, a border
cropped and the rest scaled back, brighter, mirrored, and all of the first three at once), and 100 real test images
per class, which are other photos. Features are EfficientNet-Lite0's penultimate ones, computed as `python -m
extract` computes them. For each way and threshold it prints the share of near-copies whose most similar train image
is their original at that cosine similarity or more (what `classify duplicates` reports), and the share of the other
photos it would name. With `--full-cache` (all of CIFAR-10, extracted) it prints the share of CIFAR-10's test images
at each threshold: Barz and Denzler (ciFAIR, 2020) found near-duplicates of train images for 3.3% of them by hand.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "datasets" / "cifar10"
sys.path.insert(0, str(REPO))

from classify.duplicates import nearest_train  # noqa: E402
from extract.backbones import create_backbone  # noqa: E402
from extract.features import ExtractionSettings, Extractor  # noqa: E402
from extract.store import open_cache  # noqa: E402

THRESHOLDS = (0.85, 0.9, 0.95)


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=quality)
    return Image.open(encoded).convert("RGB")


def crop(image: Image.Image, border: int = 2) -> Image.Image:
    width, height = image.size
    return image.crop((border, border, width - border, height - border)).resize(image.size,
                                                                                 Image.Resampling.BICUBIC)


WAYS = {
    "JPEG quality 60": jpeg,
    "1 px border cropped": lambda image: crop(image, 1),
    "2 px border cropped": crop,
    "10% brighter": lambda image: ImageEnhance.Brightness(image).enhance(1.1),
    "mirrored": lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "JPEG + 2 px + brighter": lambda image: jpeg(ImageEnhance.Brightness(crop(image)).enhance(1.1)),
}


def class_files(split: str, per_class: int) -> list[Path]:
    return [file for folder in sorted((CIFAR / split).iterdir())
            for file in sorted(folder.glob("*.jpg"))[:per_class]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--copies-per-class", type=int, default=20)
    parser.add_argument("--full-cache", type=Path, default=None)
    args = parser.parse_args()
    extractor = Extractor(create_backbone("efficientnet_lite0"), "avg", ExtractionSettings(workers=0))
    train_files = class_files("train", args.per_class)
    train = extractor.image_features(train_files)
    others, _ = nearest_train(train, extractor.image_features(class_files("test", 100)))
    originals = np.concatenate([np.arange(args.copies_per_class) + c * args.per_class for c in range(10)])
    images = [Image.open(train_files[i]).convert("RGB") for i in originals]
    print(f"{len(train_files)} train images; {len(originals)} near-copies made each way; {len(others)} other photos")
    print(f"{'':24s}" + "".join(f"  cosine >= {t:.2f}" for t in THRESHOLDS) + "  nearest is the original")
    for name, change in WAYS.items():
        similarity, nearest = nearest_train(train, extractor.image_features([change(image) for image in images]))
        found = nearest == originals
        print(f"{name:24s}" + "".join(f"{np.mean(found & (similarity >= t)):16.1%}" for t in THRESHOLDS)
              + f"{found.mean():25.1%}")
    print(f"{'other photos named':24s}" + "".join(f"{np.mean(others >= t):16.2%}" for t in THRESHOLDS))
    if args.full_cache:
        full = open_cache(args.full_cache)
        similarity, _ = nearest_train(full.load("train")[0], full.load("test")[0])
        print(f"{'CIFAR-10 test (10,000)':24s}" + "".join(f"{np.mean(similarity >= t):16.2%}" for t in THRESHOLDS))


if __name__ == "__main__":
    main()
