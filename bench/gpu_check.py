"""The GPU stage checked in one command, for the first GPU that is lent: one table, a row per check.

    python bench/gpu_check.py                      # on a CUDA GPU: about 5 minutes
    python bench/gpu_check.py --device cpu --quick # the same checks on tiny inputs (the test runs this)

Rows:
  features fp32     CUDA features of examples/cifar10-mini equal the CPU's (cosine >= 0.9999)
  features bf16/fp16  their cosine to the CPU's fp32 features and the linear probe's test accuracy (reported)
  pipeline fp32/bf16  `extract_to_cache` on JPEGs (decode, resize, copy, forward, HDF5) against the bare model on
                    tensors already on the device, ResNet-50 at 224 px, random weights; goal 80% of the bare rate
  finetune fp16/bf16  a few epochs of `pipelines finetune --mode full`: loss finite and falling; then --resume
  torchrun          `torchrun --nproc-per-node N -m extract` (N = the GPUs) gives the one-process file
  defaults          --device auto, batch size, workers and precision on this device, as the README states
Without CUDA (and no --device cpu) it says so in one line and exits 0. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.backbones import create_backbone  # noqa: E402
from extract.features import ExtractionSettings, Extractor  # noqa: E402
from extract.run import ExtractRequest, extract_to_cache  # noqa: E402
from extract.runtime import default_batch_size, default_workers, resolve_device, resolve_precision  # noqa: E402
from extract.store import open_cache  # noqa: E402

SAMPLE = REPO / "examples" / "cifar10-mini"
PIPELINE_GOAL = 0.8  # of the bare model's images/s


@dataclass
class Row:
    check: str
    passed: bool | None  # None: reported, no threshold
    figure: str


@dataclass(frozen=True)
class Sizes:
    """How much each check runs: the GPU run's, or tiny ones for `--quick`."""

    limit_per_class: int | None
    image_size: int
    pipeline_backbone: str
    pipeline_size: int
    pipeline_images: int
    finetune_limit: int
    finetune_epochs: int


FULL = Sizes(None, 224, "resnet50", 224, 2000, 20, 5)
QUICK = Sizes(3, 64, "resnet18", 64, 48, 4, 3)


def _silent(message: str) -> None:
    pass


def _extract(data: Path, cache: Path, device: str, precision: str, image_size: int, limit: int | None,
             backbone: str = "efficientnet_lite0", weights: str | None = None):
    result = extract_to_cache(ExtractRequest(
        backbone=backbone, dataset=str(data), weights=weights, image_size=image_size, cache_dir=str(cache),
        limit_per_class=limit, settings=ExtractionSettings(device=device, precision=precision)), log=_silent)
    return open_cache(result.path), result


def _probe(cache) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train, _ = cache.load("train")
    x_test, y_test, _ = cache.load("test")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_features(device: str, sizes: Sizes, work: Path) -> list[Row]:
    reference, _ = _extract(SAMPLE, work / "cpu", "cpu", "fp32", sizes.image_size, sizes.limit_per_class)
    rows = []
    for precision in ("fp32", "bf16", "fp16"):
        cache, _ = _extract(SAMPLE, work / f"{device}-{precision}", device, precision, sizes.image_size,
                            sizes.limit_per_class)
        cosine = np.concatenate([_cosine(cache.load(s)[0], reference.load(s)[0]) for s in ("train", "test")])
        figure = f"cosine to CPU fp32: mean {cosine.mean():.5f}, min {cosine.min():.5f}; probe {_probe(cache):.4f}"
        rows.append(Row(f"features {precision}", bool(cosine.min() >= 0.9999) if precision == "fp32" else None,
                        figure + (f" (CPU fp32 {_probe(reference):.4f})" if precision == "fp32" else "")))
    return rows


def _jpeg_folder(root: Path, count: int, size: int) -> Path:
    """`count` random JPEGs in two classes, train/ and a one-image test/ each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for n in range(count):
        for split in ("train", "test") if n < 2 else ("train",):
            folder = root / split / f"class{n % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{n:05d}.jpg")
    return root


def _bare_rate(backbone_name: str, size: int, device: str, precision: str, batches: int = 20) -> float:
    """The model alone on tensors already on the device, as the extractor runs it (folded, compiled, autocast)."""
    extractor = Extractor(create_backbone(backbone_name, "none", size), "avg",
                          ExtractionSettings(device=device, precision=precision, compile="on"))
    extractor.compile_if_it_pays(10**6)
    batch = torch.randint(0, 256, (extractor.settings.batch_size, 3, size, size), dtype=torch.uint8)
    batch = batch.to(extractor.device)
    extractor.batch_features(batch)
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(batches):
        extractor.batch_features(batch)  # returns numpy: synchronised
    return batches * len(batch) / (time.perf_counter() - started)


def check_pipeline(device: str, sizes: Sizes, work: Path) -> list[Row]:
    folder = _jpeg_folder(work / "jpegs", sizes.pipeline_images, 256)
    rows = []
    for precision in ("fp32", "bf16"):
        _, result = _extract(folder, work / f"pipeline-{precision}", device, precision, sizes.pipeline_size, None,
                             sizes.pipeline_backbone, "none")
        bare = _bare_rate(sizes.pipeline_backbone, sizes.pipeline_size, device, precision)
        share = result.images_per_second / bare
        rows.append(Row(f"pipeline {precision}", share >= PIPELINE_GOAL,
                        f"{result.images_per_second:.0f} of the bare model's {bare:.0f} images/s ({share:.0%}; "
                        f"{sizes.pipeline_backbone}, {sizes.pipeline_size} px, {result.images} images)"))
    return rows


def check_finetune(device: str, sizes: Sizes, work: Path) -> list[Row]:
    from pipelines.finetune import FinetuneConfig, finetune

    rows = []
    for precision in ("fp16", "bf16"):
        config = FinetuneConfig(backbone="efficientnet_lite0", dataset=str(SAMPLE), mode="full", device=device,
                                precision=precision, image_size=sizes.image_size, limit_per_class=sizes.finetune_limit,
                                epochs=sizes.finetune_epochs, batch_size=16, patience=sizes.finetune_epochs,
                                warmup_epochs=0,
                                out=str(work / f"finetune-{precision}"))
        losses = [row["train_loss"] for row in finetune(config, log=_silent).history]
        falling = bool(np.all(np.isfinite(losses)) and losses[-1] < losses[0])
        losses_text = ", ".join(f"{v:.3f}" for v in losses)
        rows.append(Row(f"finetune {precision}", falling, f"train loss by epoch {losses_text}"))
    config.epochs += 1
    resumed = finetune(config, resume=True, log=_silent)
    epochs = [row["epoch"] for row in resumed.history]
    rows.append(Row("finetune --resume", epochs == list(range(1, config.epochs + 1)),
                    f"epochs {epochs}, test accuracy {resumed.test_accuracy:.4f}"))
    return rows


def check_torchrun(device: str, sizes: Sizes, work: Path) -> list[Row]:
    ranks = max(1, torch.cuda.device_count()) if device != "cpu" else 2
    arguments = ["efficientnet_lite0", str(SAMPLE), "--image-size", str(sizes.image_size), "--device", device,
                 "--batch-size", "8"] + (["--limit-per-class", str(sizes.limit_per_class)] if sizes.limit_per_class
                                         else [])
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {"torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(ranks), "-m", "extract"], "single": [sys.executable, "-m", "extract"]}
    files = {}
    for name, command in commands.items():
        done = subprocess.run([*command, *arguments, "--cache-dir", str(work / name)], cwd=REPO, env=one_thread,
                              capture_output=True, text=True)
        if done.returncode:
            return [Row(f"torchrun {ranks} ranks", False, f"{name} failed: {done.stderr.strip().splitlines()[-1]}")]
        files[name] = open_cache(done.stdout.strip().splitlines()[-1])
    gap = max(float(np.abs(files["torchrun"].load(split)[0] - files["single"].load(split)[0]).max())
              for split in ("train", "test"))
    return [Row(f"torchrun {ranks} ranks", gap <= 1e-5, f"largest difference to one process {gap:.2e}")]


def check_defaults(device: str) -> list[Row]:
    """What --device auto and the unset options come to here, against the README's statements."""
    chosen = resolve_device("auto" if device != "cpu" else "cpu")
    expected = {"device": "cuda" if device != "cpu" else "cpu",
                "batch size": 64 if chosen.type == "cuda" else 16,
                "workers": min(8, os.cpu_count() or 1) if chosen.type == "cuda" else None,
                "precision auto": ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if chosen.type == "cuda"
                else None}
    found = {"device": chosen.type, "batch size": default_batch_size(chosen),
             "workers": default_workers(chosen), "precision auto": resolve_precision("auto", chosen)}
    return [Row(f"default {name}", value == expected[name] if expected[name] is not None else None, str(value))
            for name, value in found.items()]


CHECKS: dict[str, Callable[[str, Sizes, Path], list[Row]]] = {
    "features": check_features, "pipeline": check_pipeline, "finetune": check_finetune,
    "torchrun": check_torchrun, "defaults": lambda device, sizes, work: check_defaults(device)}


def run_checks(device: str, sizes: Sizes, only: list[str]) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for name in only:
            started = time.perf_counter()
            try:
                found = CHECKS[name](device, sizes, Path(work))
            except Exception as error:  # noqa: BLE001 - a check that breaks is a failed row, the others still run
                found = [Row(name, False, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")]
            print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            rows += found
    return rows


def format_table(rows: list[Row]) -> str:
    mark = {True: "pass", False: "FAIL", None: "report"}
    lines = ["| check | result | figure |", "|---|---|---|"]
    lines += [f"| {row.check} | {mark[row.passed]} | {row.figure} |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, to try the checks without a GPU")
    parser.add_argument("--quick", action="store_true", help="tiny inputs: seconds, not minutes")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}")
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing checked (run this on a machine with one, or pass --device cpu)")
        return 0
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in CHECKS]
    if unknown:
        parser.error(f"unknown check {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    sizes = QUICK if args.quick else FULL
    name = torch.cuda.get_device_name() if args.device != "cpu" else "CPU"
    print(f"{name}, torch {torch.__version__}, {'quick' if args.quick else 'full'} sizes")
    rows = run_checks(args.device, sizes, only)
    print(format_table(rows))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
