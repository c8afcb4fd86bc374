from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extract.preprocess import Preprocess, enlarge, resize_and_crop, resize_or_defer, stack_at_crop

MINI = Path(__file__).resolve().parents[1] / "examples" / "cifar10-mini"


def preprocess(interpolation: str, crop: int = 224) -> Preprocess:
    return Preprocess(crop_size=crop, resize_size=round(crop * 256 / 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      interpolation=interpolation)


def random_images(size: tuple[int, int], count: int = 4, mode: str = "RGB") -> list[Image.Image]:
    rng = np.random.default_rng(sum(size))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).convert("RGB") for _ in range(count)]


def assert_as_pil(batch: torch.Tensor, images: list[Image.Image], recipe: Preprocess) -> None:
    """PIL's pixels, but for float32 rounding where PIL's sum lands within 1e-5 of a half: about 1 pixel in 12,000
    on CIFAR-10 in bicubic, none in bilinear (7x); on these noise images up to 1 in 70 in bilinear (4.8x)."""
    expected = torch.stack([resize_and_crop(image, recipe) for image in images])
    assert batch.shape == expected.shape and batch.dtype == torch.uint8
    difference = (batch.int() - expected.int()).abs()
    assert difference.max() <= 2
    assert (difference > 0).float().mean() < (1e-3 if recipe.interpolation == "bicubic" else 0.02)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_small_cifar_images_enlarge_as_pil_resizes_them(interpolation):
    images = [Image.open(path).convert("RGB") for path in sorted(MINI.glob("train/*/*.jpg"))[::6]]
    recipe = preprocess(interpolation)
    assert_as_pil(enlarge(torch.stack([resize_or_defer(image, recipe) for image in images]), recipe), images, recipe)


@pytest.mark.parametrize("size", [(20, 30), (30, 20), (8, 8), (95, 40)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_non_square_and_tiny_images_are_enlarged_and_centre_cropped_as_pil(size, interpolation):
    images = random_images(size, mode="L" if size == (8, 8) else "RGB")
    recipe = preprocess(interpolation, crop=96)
    small = torch.stack([resize_or_defer(image, recipe) for image in images])
    assert small.shape[-2:] == (size[1], size[0])  # deferred, not resized yet
    assert_as_pil(enlarge(small, recipe), images, recipe)


def test_a_mixed_batch_keeps_its_order():
    recipe = preprocess("bicubic", crop=64)
    images = random_images((32, 32), 2) + random_images((100, 80), 2) + random_images((24, 40), 2)
    order = [0, 2, 4, 1, 5, 3]
    images = [images[i] for i in order]
    assert_as_pil(stack_at_crop([resize_or_defer(image, recipe) for image in images], recipe), images, recipe)


def test_large_images_and_other_filters_are_resized_by_pil_at_once():
    large = random_images((100, 80), 1)[0]
    nearest = preprocess("nearest", crop=64)
    bicubic = preprocess("bicubic", crop=64)
    assert torch.equal(resize_or_defer(large, bicubic), resize_and_crop(large, bicubic))
    small = random_images((32, 32), 1)[0]
    assert torch.equal(resize_or_defer(small, nearest), resize_and_crop(small, nearest))


def test_a_squash_recipe_resizes_both_sides_large_and_small_images_alike():
    """timm's 'squash' (its 384 px fine-tunes): the whole image, aspect ratio given up, as timm's transform does."""
    from timm.data import create_transform

    squash = Preprocess(crop_size=64, resize_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic",
                        crop_mode="squash")
    wide = random_images((100, 50), 1)[0]
    timm_transform = create_transform(64, interpolation="bicubic", crop_pct=1.0, crop_mode="squash",
                                      mean=(0, 0, 0), std=(1, 1, 1))
    expected = (timm_transform(wide) * 255).round().to(torch.uint8)
    assert torch.equal(resize_and_crop(wide, squash), expected)
    assert not torch.equal(resize_and_crop(wide, squash), resize_and_crop(wide, preprocess("bicubic", crop=64)))
    small = random_images((20, 30))
    assert_as_pil(enlarge(torch.stack([resize_or_defer(image, squash) for image in small]), squash), small, squash)


@pytest.mark.parametrize("size", [(100, 50), (40, 90), (20, 30), (64, 64)])
def test_a_border_recipe_keeps_the_whole_image_and_pads_with_the_mean_as_timm_does(size):
    """timm's 'border' (DeepSeek's ViT): the long side to the resize size, the short side padded with the mean's
    colour; small images are resized the same way at the crop size, not deferred to `enlarge`."""
    from timm.data import create_transform

    mean = (0.2, 0.5, 0.8)
    border = Preprocess(crop_size=64, resize_size=64, mean=mean, std=(0.5,) * 3, interpolation="bicubic",
                        crop_mode="border")
    image = random_images(size, 1)[0]
    timm_transform = create_transform(64, interpolation="bicubic", crop_pct=1.0, crop_mode="border", mean=mean,
                                      normalize=False)
    ours = resize_or_defer(image, border)
    assert torch.equal(ours, timm_transform(image))
    if size[0] != size[1]:
        assert ours[:, 0, 0].tolist() == [51, 128, 204]  # a padded corner: round(255 * mean)
