"""From decoded images to the backbone's input: the recipe (`Preprocess`, carried with the weights), then resize,
centre-crop, batch, normalise.

Images at least the crop size are resized and cropped one by one with PIL, as torchvision's transforms do. Images
smaller than the crop (CIFAR's 32 px, digits' 8 px) are enlarged a batch at a time instead: PIL's resampling is
linear, so its two passes (rows, then columns) are two matrix products with PIL's own fixed-point coefficients,
and the crop is just the rows of the matrix that survive it. Measured on 2 cores, CIFAR-10 to 224 px: 0.10 against
0.44 ms per image (resize, crop and stacking); whole `python -m extract` runs of 10,010 CIFAR-10 images, Lite0:
59.6-61.6 against 65.2-65.7 s. The pixels are PIL's but for float32 rounding where PIL's fixed-point sum lands
within 1e-5 of a half, off by 1 or 2 levels of 255: 1 pixel in 12,000 on CIFAR-10 in bicubic, none in bilinear
(7x, exact weights), up to 1 in 70 for noise images in bilinear at 4.8x (`tests/test_pixels.py`). Exact sums (each
weight split in two, products exact in float32) cost 0.5 ms per image, more than PIL itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import torch
import torchvision.transforms.functional as TF
from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """How images are turned into model input: resize the short side, centre-crop, normalise.

    Images smaller than the crop (CIFAR's 32 px, say) are resized straight to the crop size so that
    none of their content is cropped away. `crop_mode` names timm's other recipes for some weights: "squash", both
    sides to the resize size whatever the aspect ratio, then the centre crop; "border", the long side to the resize
    size, the short side padded with the mean colour, then the centre crop.
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_mode: str = "center"

    def with_image_size(self, size: int) -> Preprocess:
        """The same recipe at another input size, keeping the resize/crop ratio."""
        ratio = self.resize_size / self.crop_size
        return replace(self, crop_size=size, resize_size=round(size * ratio))

    def to_dict(self) -> dict:
        """The record in a cache's provenance; without `crop_mode` where it is the centre crop, as before the field
        existed, so that those caches still match."""
        record = asdict(self)
        if self.crop_mode == "center":
            del record["crop_mode"]
        return record


PIL_PRECISION_BITS = 22  # Pillow's Resample.c: 8-bit images are resampled with 22-bit fixed-point coefficients


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}  # PIL's filters and their support


def resize_and_crop(image: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """Short side to the resize size (to the crop size for images smaller than the crop), both sides where the
    recipe squashes, or the long side where it keeps the border, then centre-crop: uint8 CHW."""
    target = preprocess.crop_size if min(image.size) < preprocess.crop_size else preprocess.resize_size
    interpolation = TF.InterpolationMode(preprocess.interpolation)
    if preprocess.crop_mode == "border":
        return _resize_long_side_and_pad(image, target, interpolation, preprocess)
    size = [target, target] if preprocess.crop_mode == "squash" else target
    image = TF.resize(image, size, interpolation=interpolation, antialias=True)
    return TF.pil_to_tensor(TF.center_crop(image, preprocess.crop_size))


def _resize_long_side_and_pad(image: Image.Image, long_side: int, interpolation: TF.InterpolationMode,
                              preprocess: Preprocess) -> torch.Tensor:
    """timm's "border" recipe: the whole image, its long side to `long_side`, centred on a square of the crop size
    filled with the mean colour (zero after normalising), cropped where it is larger."""
    width, height = image.size
    scale = max(width, height) / long_side
    image = TF.resize(image, [round(height / scale), round(width / scale)], interpolation=interpolation,
                      antialias=True)
    crop = preprocess.crop_size
    pad_width, pad_height = max(crop - image.width, 0), max(crop - image.height, 0)
    if pad_width or pad_height:  # an odd padding's extra pixel goes right and below, as in timm's CenterCropOrPad
        fill = tuple(round(255 * mean) for mean in preprocess.mean)
        image = TF.pad(image, [pad_width // 2, pad_height // 2, (pad_width + 1) // 2, (pad_height + 1) // 2],
                       fill=fill)
    return TF.pil_to_tensor(TF.center_crop(image, crop))


def resize_or_defer(image: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """uint8 CHW: resized and cropped now, or, for an image smaller than the crop, as it is, for `stack_at_crop` to
    enlarge together with the others of its size."""
    deferrable = preprocess.interpolation in FILTERS and preprocess.crop_mode != "border"  # border pads: PIL does it
    if deferrable and min(image.size) < preprocess.crop_size:
        return TF.pil_to_tensor(image)
    return resize_and_crop(image, preprocess)


def stack_at_crop(images: list[torch.Tensor], preprocess: Preprocess) -> torch.Tensor:
    """uint8 NCHW at the crop size from `resize_or_defer`'s images, enlarging the small ones of each size at once."""
    crop = (preprocess.crop_size, preprocess.crop_size)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[1:]), []).append(index)

    def at_crop(size: tuple[int, int], group: torch.Tensor) -> torch.Tensor:
        return group if size == crop else enlarge(group, preprocess)

    if len(by_size) == 1:  # the usual batch: all one size
        (size,) = by_size
        return at_crop(size, torch.stack(images))
    batch = torch.empty(len(images), images[0].shape[0], *crop, dtype=torch.uint8)
    for size, indices in by_size.items():
        batch[indices] = at_crop(size, torch.stack([images[i] for i in indices]))
    return batch


def enlarge(small: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 NCHW images smaller than the crop, all of one size, to the crop size: what `resize_and_crop` does to
    each (short side to the crop size, centre crop), as PIL computes it: rows first, rounded to bytes, then columns."""
    height, width = small.shape[-2:]
    crop = preprocess.crop_size
    # torchvision's resized size: the short side to `crop`, the long side scaled and truncated (or both to `crop`)
    if preprocess.crop_mode == "squash":
        scaled_height = scaled_width = crop
    elif width <= height:
        scaled_height, scaled_width = int(crop * height / width), crop
    else:
        scaled_height, scaled_width = crop, int(crop * width / height)
    rows = _resampling_matrix(width, scaled_width, crop, preprocess.interpolation)
    columns = _resampling_matrix(height, scaled_height, crop, preprocess.interpolation)
    wide = torch.matmul(small.float(), rows.T).add_(0.5).clamp_(0, 255).floor_()  # PIL rounds half up, to bytes
    return torch.matmul(columns, wide).add_(0.5).clamp_(0, 255).to(torch.uint8)


@lru_cache(maxsize=64)
def _resampling_matrix(size_in: int, size_out: int, crop: int, interpolation: str) -> torch.Tensor:
    """The centre `crop` rows of PIL's (size_out, size_in) resampling matrix (Pillow's Resample.c,
    precompute_coeffs and normalize_coeffs_8bpc): each output pixel's normalised filter weights, in fixed point."""
    start = int(round((size_out - crop) / 2.0))  # torchvision's center_crop offset
    kernel, support = FILTERS[interpolation]
    scale = size_in / size_out
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    one = 1 << PIL_PRECISION_BITS
    matrix = torch.zeros(crop, size_in, dtype=torch.float64)
    for row, out in enumerate(range(start, start + crop)):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), size_in)
        weights = [kernel((i - center + 0.5) / filter_scale) for i in range(first, last)]
        total = sum(weights)
        for i, weight in zip(range(first, last), weights, strict=True):
            weight = weight / total if total else 0.0
            matrix[row, i] = math.floor(weight * one + 0.5) if weight >= 0 else math.ceil(weight * one - 0.5)
    return (matrix / one).float()


def normalize(batch: torch.Tensor, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """uint8 NCHW on the host to normalised float on the device, channels-last (faster convolutions).
    The layout changes while the pixels are still bytes, and (x / 255 - mean) / std is one multiply-add:
    measured on 2 cores, 0.49 against 0.77 ms per 224 px image for the step-by-step version."""
    batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    scale = torch.tensor([1 / (255 * s) for s in preprocess.std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(preprocess.mean, preprocess.std, strict=True)],
                         device=device).view(1, 3, 1, 1)
    return torch.addcmul(shift, batch, scale)
