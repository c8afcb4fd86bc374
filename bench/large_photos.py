"""Why `python -m extract` decodes large JPEGs in full: a reduced-scale decode against a full one (tried and left).

    python bench/large_photos.py [--size 2048x1536] [--per-class 100] [--noise 6] [--quality 90] [--gaps 4,2]

Offline there is no dataset of large photos, so this one is made: the first `--per-class` CIFAR-10 training images
of each class (../shared/datasets/cifar10), enlarged to `--size` (bicubic), with Gaussian noise of `--noise` levels
added per pixel (the fine detail a camera sensor adds, where resampling methods differ most), saved as JPEGs of
`--quality` under `--workdir` (made once, reused). Each image is then decoded and resized as `python -m extract`
does, with `efficientnet_lite0`'s preprocessing: (a) decoded in full (`datasets.load_image`); then decoded by libjpeg
at 1/2, 1/4 or 1/8 scale (PIL's `draft`), its short side still at least `gap` times the resize size, as Pillow's
`thumbnail` does with its default gap of 2, for each of `--gaps`.
It prints the decode-and-resize time per image (one thread), the features' cosine similarity to (a), and the
accuracy of the same linear probe on each, averaged over 10 fixed stratified thirds held out, with its paired
difference to (a).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract_speed import row_cosine  # noqa: E402

from extract.backbones import create_backbone  # noqa: E402
from extract.datasets import load_image  # noqa: E402
from extract.features import ExtractionSettings, Extractor  # noqa: E402
from extract.preprocess import resize_and_crop  # noqa: E402

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10" / "train"


def make_photos(workdir: Path, size: tuple[int, int], per_class: int, noise: float, quality: int) -> list[Path]:
    """Enlarged, noisy CIFAR-10 images as large JPEGs, one folder per class; existing files are kept."""
    rng = np.random.default_rng(0)
    files = []
    for class_dir in sorted(p for p in CIFAR.iterdir() if p.is_dir()):
        (workdir / class_dir.name).mkdir(parents=True, exist_ok=True)
        for source in sorted(class_dir.glob("*.jpg"))[:per_class]:
            target = workdir / class_dir.name / source.name
            if not target.exists():
                enlarged = np.asarray(Image.open(source).convert("RGB").resize(size, Image.BICUBIC), np.float32)
                noisy = np.clip(enlarged + noise * rng.standard_normal(enlarged.shape, np.float32) + 0.5, 0, 255)
                Image.fromarray(noisy.astype(np.uint8)).save(target, quality=quality)
            files.append(target)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2048x1536", help="WIDTHxHEIGHT of the photos (default 3 megapixels)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--noise", type=float, default=6.0, help="standard deviation, in levels of 255")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--gaps", type=lambda v: [float(g) for g in v.split(",")], default=[4.0, 2.0],
                        help="reducing gaps to compare with a full decode (default 4,2)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: /tmp/large_photos_SIZE")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    workdir = args.workdir or Path(f"/tmp/large_photos_{args.size}")
    files = make_photos(workdir, size, args.per_class, args.noise, args.quality)
    labels = np.array([sorted({f.parent.name for f in files}).index(f.parent.name) for f in files])

    torch.set_num_threads(2)
    backbone = create_backbone("efficientnet_lite0")
    extractor = Extractor(backbone, "avg", ExtractionSettings(device="cpu", compile="off"))
    print(f"{len(files)} JPEGs of {size[0]}x{size[1]} (noise {args.noise}, quality {args.quality}) in {workdir}, "
          f"efficientnet_lite0, resize {backbone.preprocess.resize_size}, crop {backbone.preprocess.crop_size}")
    print("| decoding | decoded at | decode + resize (ms/image, 1 thread) | feature cosine to (a), mean / min | "
          "probe accuracy | moved (points, +- standard error) |")
    print("|---|---|---:|---|---:|---|")
    reference = None
    for gap in (None, *args.gaps):
        seconds, batches = 0.0, []
        for start in range(0, len(files), 16):
            began = time.perf_counter()
            images = [reduced_decode(f, gap * backbone.preprocess.resize_size) if gap else load_image(f, str(f))
                      for f in files[start:start + 16]]
            decoded = images[0].size
            pixels = torch.stack([resize_and_crop(image, backbone.preprocess) for image in images])
            seconds += time.perf_counter() - began
            batches.append(extractor.batch_features(pixels))
        features, scores = np.concatenate(batches), probe_scores(np.concatenate(batches), labels)
        name = "(a) in full" if gap is None else f"reduced, gap {gap:g}"
        reference = reference or (features, scores)
        cosine = row_cosine(reference[0], features)
        moved = 100 * (scores - reference[1])
        print(f"| {name} | {decoded[0]}x{decoded[1]} | {seconds / len(files) * 1e3:.1f} | "
              f"{cosine.mean():.6f} / {cosine.min():.6f} | {scores.mean():.4f} | "
              f"{moved.mean():+.2f} +- {moved.std(ddof=1) / np.sqrt(len(moved)):.2f} |")


def reduced_decode(path: Path, min_side: float) -> Image.Image:
    """A JPEG decoded by libjpeg at the smallest scale (1/2, 1/4, 1/8) whose short side is still `min_side`."""
    with Image.open(path) as image:
        scale = min_side / min(image.size)
        if scale <= 0.5:
            image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        return image.convert("RGB")


def probe_scores(features: np.ndarray, labels: np.ndarray, splits: int = 10) -> np.ndarray:
    """Test accuracy of a logistic-regression probe on each of `splits` fixed stratified thirds held out: the same
    splits for every feature set, so their differences are paired."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    thirds = StratifiedShuffleSplit(n_splits=splits, test_size=1 / 3, random_state=0)
    return cross_val_score(probe, features, labels, cv=thirds, n_jobs=1)


if __name__ == "__main__":
    main()
