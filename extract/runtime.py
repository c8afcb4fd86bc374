"""Where and how the network runs: device, precision and its autocast, batch size, decoding workers, and the
allocator setting that keeps a batch's memory for the next one."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

import torch

from extract.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def keep_freed_memory() -> None:
    """Let the next batch reuse the memory the last one freed. glibc hands every block above its mmap threshold
    (a batch's activations are tens of MB) back to the kernel on free, and the next batch page-faults it in again:
    measured here, 22 s of system time in 30 s for 1,000 images, and half the throughput. Raising the mmap and trim
    thresholds keeps those blocks in the heap (peak memory is unchanged: it is the same high-water mark).
    glibc only; elsewhere nothing happens. A setting of the whole process, with no way to read it back: the CLIs
    make it (extract, pipelines, classify predict); a notebook that extracts a lot may call it too."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: 1 GiB (mallopt takes a C int)
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


# --precision -> the dtype autocast computes in; fp32 runs without autocast
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The one autocast for --precision (extraction, training, prediction): mixed precision in bf16 or fp16, or
    disabled for fp32."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX),
    float32 elsewhere. Not the default: with efficientnet_lite0 on CIFAR-10, bf16 features sit at cosine 0.9977 to
    fp32 and the full-data heads within 0.26 points (bench/precision_check.py), but the linear probe of
    bench/extract_speed.py moved by 1.2 points at 2,000 images and 0.6 at 10,000, over the 0.3 we allow."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native else "fp32"


def ignore_interrupts(_worker: int) -> None:
    """Ctrl-C reaches the decoding workers too; the main process decides when to stop (after a batch is written)
    and shuts them down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_batch_size(device: torch.device) -> int:
    """16 images on a CPU, where a batch's activations stay closer to the caches: the models alone, compiled, fp32,
    2 cores, batch 16 against 64: efficientnet_lite0 253-283 against 241-244 images/s, resnet18 103.5 against 98.4,
    mobilenet_v3_large 402 against 385, convnext_tiny 29.6 against 28.4, resnet50 43.4 against 42.6 (bf16: 228 against
    227). 64 on a GPU, which needs large batches to be busy."""
    return 16 if device.type == "cpu" else 64


LARGE_IMAGE_MEGAPIXELS = 1.0  # about where 2 decoding workers start to pay on 2 cores (1.2 MP: 4-7% faster)


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 (decode in the main process) or more, not {workers}")


def default_workers(device: torch.device, megapixels: Callable[[], float] = lambda: 0.0) -> int:
    """Decoding processes. With the model on a CPU of 2 cores or fewer, a worker competes with the model for the same
    cores: none for small images, 2 for images of `LARGE_IMAGE_MEGAPIXELS` or more (`megapixels()`, asked only
    there, as it decodes an image), where decoding takes longer
    (measured on 2 cores, Lite0, whole process, images/s with 0 against 2 workers: CIFAR-10 171/166 against 142/147;
    500x375 JPEGs 124/123 against 115/122; 1.2-megapixel 58.2/57.4 against 60.5/64.0; 3 megapixels 28.0/27.9
    against 34.7/38.2; 12 megapixels 8.9/8.7 against 12.9/13.3). Else cores - 1, up to 8; with the model on a GPU
    every core, up to 8, as the CPU's only work is decoding (not measured here: no GPU)."""
    cores = os.cpu_count() or 1
    if device.type != "cpu":
        return min(8, cores)
    if cores <= 2:
        return 2 if megapixels() >= LARGE_IMAGE_MEGAPIXELS else 0
    return min(8, cores - 1)
