"""`Extractor`: a backbone ready to turn images (a dataset's splits, files or PIL images) into pooled features on a
device, optimised (`optimize`) and compiled where that pays, at the precision asked for (`runtime`)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from extract.backbones import Backbone
from extract.datasets import BadImageError, Split, load_image, to_rgb
from extract.errors import UsageError
from extract.layers import DEFAULT_LAYER, FeatureModel
from extract.optimize import compile_blocks, fold_batch_norms, static_same_padding
from extract.preprocess import Preprocess, normalize, resize_or_defer, stack_at_crop
from extract.runtime import (
    PRECISIONS,
    autocast,
    check_workers,
    default_batch_size,
    default_workers,
    ignore_interrupts,
    resolve_device,
    resolve_precision,
)

COMPILE_MODES = ("auto", "on", "off")
# torch.compile's start-up (about 5 s with torch's compiler cache warm) against its faster batches: efficientnet_lite0
# fp32 on the 2-core CPU, batch 16, whole `python -m extract` process, --compile on against off: 3,510 images
# 20.1/21.6 against 21.0/20.9 s, 4,510 24.0/25.8 against 26.0/25.8 s (at batch 64 it broke even between 5,000 and
# 7,500 images)
COMPILE_MIN_IMAGES = 4500


class _SplitImages(TorchDataset):
    """Decoded uint8 images of a split from row `start` on, resized or, if small, left for the batch to enlarge
    (`resize_or_defer`); bad images come back as their error."""

    def __init__(self, split: Split, preprocess: Preprocess, start: int = 0):
        self.split, self.preprocess, self.start = split, preprocess, start

    def __len__(self) -> int:
        return len(self.split) - self.start

    def __getitem__(self, index: int):
        try:
            return resize_or_defer(self.split.image(self.start + index), self.preprocess), None
        except BadImageError as error:
            return None, (error.sample_id, str(error))


def _split_batch(items: list, preprocess: Preprocess) -> tuple[torch.Tensor | None, list[int], list[tuple[str, str]]]:
    good = [i for i, (image, _) in enumerate(items) if image is not None]
    images = stack_at_crop([items[i][0] for i in good], preprocess) if good else None
    return images, good, [error for _, error in items if error is not None]


@dataclass
class ExtractionSettings:
    """How to run the backbone: these change speed only, except precision, which is part of the cache key."""

    batch_size: int | None = None  # None: default_batch_size(device)
    device: str = "auto"
    precision: str = "fp32"
    workers: int | None = None
    compile: str = "auto"


def _megapixels(split: Split, row: int) -> float:
    """The size of image `row` (a split's first to compute): how large the split's images are, as a rule."""
    try:
        width, height = split.image(row).size if row < len(split) else (0, 0)
    except BadImageError:
        return 0.0
    return width * height / 1e6


class Extractor:
    """A backbone ready to turn images into pooled features on a device."""

    def __init__(self, backbone: Backbone, pool: str, settings: ExtractionSettings,
                 layers: str = DEFAULT_LAYER, flip: bool = False):
        if settings.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, not {settings.precision!r}")
        if settings.batch_size is not None and settings.batch_size < 1:
            raise UsageError(f"--batch-size must be 1 or more, not {settings.batch_size}")
        check_workers(settings.workers)
        if settings.compile not in COMPILE_MODES:
            raise UsageError(f"--compile must be one of {', '.join(COMPILE_MODES)}, not {settings.compile!r}")
        # its own copy: folding batch norms, static padding, the device and the memory format change the modules, and
        # the model the caller handed in stays as it was
        self.backbone = replace(backbone, model=copy.deepcopy(backbone.model))
        self.device = resolve_device(settings.device)
        self.settings = replace(settings, batch_size=settings.batch_size or default_batch_size(self.device))
        self.precision = resolve_precision(settings.precision, self.device)
        self.model = FeatureModel(self.backbone.model, pool, layers, flip).to(self.device)
        self.model.to(memory_format=torch.channels_last)
        self.model.eval()
        self.compiled = False
        self.prepared = False
        self._compiled_forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # from pixels on the device

    def _prepare_once(self) -> None:
        """Fold batch norms and make 'same' paddings static, before the backbone first computes features or is
        compiled (whose frozen graph captures the weights); not on construction, which also serves a run that finds
        its cache entry and computes nothing."""
        if not self.prepared:
            fold_batch_norms(self.backbone.model)
            static_same_padding(self.backbone.model, self.backbone.preprocess.crop_size)
            self.prepared = True

    def compile_if_it_pays(self, images: int) -> str | None:
        """torch.compile the backbone when it pays (`--compile on`, or `auto` from COMPILE_MIN_IMAGES images) and say
        so; None when it stays eager. One graph from pixels to pooled features (`as_graph`), or block by block when
        the backbone does not trace. The features are the same to float rounding."""
        mode = self.settings.compile
        if self.compiled or mode == "off" or (mode == "auto" and images < COMPILE_MIN_IMAGES):
            return None
        import torch._dynamo
        import torch._inductor.config

        # Every extractor compiles the same code (from_pixels below, or the same block classes): in one process (a
        # notebook trying backbones) each compile adds an entry to that code's cache, and past torch's recompile
        # limit (8) the ninth ran eagerly while saying it was compiled, and every earlier graph stayed in memory with
        # its weights. A reset drops them; an earlier extractor still in use compiles again on its next batch.
        torch._dynamo.reset()
        torch._inductor.config.freezing = True  # weights are constants: packed once for the CPU's kernels
        self._prepare_once()
        whole = self.model.as_graph()
        if whole is not None:
            preprocess, device = self.backbone.preprocess, self.device

            def from_pixels(pixels: torch.Tensor) -> torch.Tensor:
                # normalisation in the graph too: one fused pass instead of an eager float32 copy of the batch
                # (Extractor.features: ResNet-50 bf16 185 against 161 images/s, Lite0 bf16 427 against 340)
                return whole(normalize(pixels, preprocess, device))

            self._compiled_forward, originals = torch.compile(from_pixels, dynamic=False), []
        else:
            originals = compile_blocks(self.backbone.model, self.model.points["penultimate"].module
                                       if "penultimate" in self.model.points else "")
        size = self.backbone.preprocess.crop_size
        try:  # compilation happens on the first call: do it now, so a failure falls back to eager here
            self.compiled = True
            self.batch_features(torch.zeros(1, 3, size, size, dtype=torch.uint8))
        except Exception as error:  # noqa: BLE001 - no C++ compiler, an unsupported op...: run eagerly instead
            self.compiled, self._compiled_forward = False, None
            for module, forward in originals:
                module.forward = forward
            return f"torch.compile failed ({type(error).__name__}), running eagerly"
        what = "the backbone as one graph" if whole is not None else "the backbone's blocks (it does not trace)"
        return f"compiled {what} with torch.compile (--compile off skips this)"

    @property
    def layout(self) -> list[tuple[str, int, int]]:
        return self.model.layout

    def batch_features(self, batch: torch.Tensor) -> np.ndarray:
        """uint8 NCHW images (already resized and cropped) to float32 features.

        The compiled graph is specialised to one batch shape and to ordinary (not inference-mode) input tensors,
        which is what the data loader gives: so a short batch is padded, and outside inference mode. (A warm-up
        tensor made inside it had cost every run a second compilation: 6.6 s for ResNet-50.)"""
        self._prepare_once()
        count = len(batch)
        if self.compiled and count < self.settings.batch_size:
            batch = torch.cat([batch, batch.new_zeros(self.settings.batch_size - count, *batch.shape[1:])])
        with torch.inference_mode(), autocast(self.precision, self.device):
            pixels = batch.to(self.device, non_blocking=True)
            features = (self._compiled_forward(pixels) if self._compiled_forward is not None
                        else self.model(normalize(pixels, self.backbone.preprocess, self.device)))
        return features[:count].cpu().numpy()

    def feature_dim(self) -> int:
        return self.model.feature_dim

    def image_features(self, images: Sequence[Image.Image | str | os.PathLike]) -> np.ndarray:
        """Features of PIL images of any mode (converted to RGB as files are) or of image files (decoded upright, as
        a dataset's are): (N, feature_dim), float32, computed a batch at a time so that memory stays flat."""
        preprocess, size = self.backbone.preprocess, self.settings.batch_size
        chunks = [np.empty((0, self.feature_dim()), dtype=np.float32)]
        for start in range(0, len(images), size):
            loaded = [to_rgb(item) if isinstance(item, Image.Image) else load_image(item, str(item))
                      for item in images[start:start + size]]
            chunks.append(self.batch_features(stack_at_crop([resize_or_defer(image, preprocess) for image in loaded],
                                                      preprocess)))
        return np.concatenate(chunks)

    def split_features(self, split: Split, start: int = 0) -> Iterator[tuple[int, np.ndarray, list[tuple[str, str]]]]:
        """Yield (first row, features, [(id, error)]) batch by batch from row `start`; unreadable images: NaN rows."""
        dim = self.feature_dim()
        workers = self.settings.workers
        if workers is None:
            workers = default_workers(self.device, lambda: _megapixels(split, start))
        preprocess = self.backbone.preprocess
        loader = DataLoader(_SplitImages(split, preprocess, start), batch_size=self.settings.batch_size,
                            num_workers=workers, collate_fn=partial(_split_batch, preprocess=preprocess),
                            pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers else None,
                            worker_init_fn=ignore_interrupts)
        row = start
        for images, good, errors in loader:
            out = np.full((len(good) + len(errors), dim), np.nan, dtype=np.float32)
            if images is not None:
                out[good] = self.batch_features(images)
            yield row, out, errors
            row += len(out)
