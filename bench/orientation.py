"""What applying the EXIF orientation tag is worth: photos stored sideways, read upright or as stored.

    python bench/orientation.py [--per-class 100] [--backbone efficientnet_lite0] [--workdir /tmp/orientation]

Phones store a portrait photo sideways, with an orientation tag that viewers apply. This makes such a dataset
from ../shared/datasets/cifar10: the first `--per-class` train and test images of each class, every other one stored
turned 90 degrees (a) with orientation tag 6, which `python -m extract` applies, and (b) without it, the pixels a
loader that ignores the tag sees (as this tool did before). Each folder then goes through `python -m extract` and
`python -m classify logreg --json` as a user runs them; it prints both test accuracies.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"
ORIENTATION = 0x0112  # EXIF tag; 6: turn 90 degrees clockwise to view


def make_folder(root: Path, per_class: int, tagged: bool) -> Path:
    """Every other image of each class stored turned; with `tagged`, the tag that turns it back. Made once."""
    if root.exists():
        return root
    for split in ("train", "test"):
        for class_dir in sorted(p for p in (CIFAR / split).iterdir() if p.is_dir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for i, source in enumerate(sorted(class_dir.glob("*.jpg"))[:per_class]):
                image, exif = Image.open(source).convert("RGB"), Image.Exif()
                if i % 2:
                    image = image.transpose(Image.Transpose.ROTATE_90)
                    if tagged:
                        exif[ORIENTATION] = 6
                image.save(root / split / class_dir.name / source.name, quality=95, exif=exif)
    return root


def test_accuracy(folder: Path, backbone: str, cache: Path) -> float:
    """`python -m extract` then `python -m classify logreg`, as a user runs them."""
    run = [sys.executable, "-m"]
    path = subprocess.run([*run, "extract", backbone, str(folder), "--cache-dir", str(cache)], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    result = subprocess.run([*run, "classify", "logreg", path, "--json"], check=True, capture_output=True, text=True)
    return json.loads(result.stdout)["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/orientation"))
    args = parser.parse_args()
    print(f"{args.backbone}, CIFAR-10, {args.per_class} train and {args.per_class} test images per class, every "
          "other one stored turned 90 degrees; python -m classify logreg (default sweep)")
    print("| the turned images | test accuracy |\n|---|---:|")
    for name, tagged in (("(a) tagged: read upright", True), ("(b) untagged: read as stored, sideways", False)):
        folder = make_folder(args.workdir / ("tagged" if tagged else "untagged"), args.per_class, tagged)
        print(f"| {name} | {test_accuracy(folder, args.backbone, args.workdir / 'cache'):.4f} |")


if __name__ == "__main__":
    main()
