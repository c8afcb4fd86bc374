"""Compute-or-reuse: dataset + backbone -> one complete cache entry. Used by the CLI and by later stages."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from extract.backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from extract.datasets import Dataset, Split, copies_warning, resolve_dataset
from extract.distributed import World, shard, world
from extract.errors import UsageError
from extract.features import ExtractionSettings, Extractor
from extract.layers import DEFAULT_LAYER
from extract.paths import CacheLock
from extract.store import (
    DEFAULT_CACHE_DIR,
    FLIP_KEY,
    SUFFIX,
    CacheInfo,
    CacheWriter,
    RowDonor,
    SplitRows,
    entry_name,
    identity_changes,
    merge_parts,
)

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


@dataclass
class ExtractRequest:
    """Everything that names one cache entry, plus how to compute it."""

    backbone: str = DEFAULT_BACKBONE
    dataset: str = ""
    weights: str | None = None
    pool: str = "avg"
    layers: str = DEFAULT_LAYER
    flip: bool = False  # each image's features averaged with its mirror image's
    image_size: int | None = None
    limit_per_class: int | None = None
    train_per_class: int | None = None
    data_root: str = "data"
    cache_dir: str = DEFAULT_CACHE_DIR
    force: bool = False
    skip_bad: bool = False
    settings: ExtractionSettings = field(default_factory=ExtractionSettings)
    progress: bool = True  # a bar over the images on stderr (the CLIs'); `extract()` from Python asks for none


@dataclass
class ExtractResult:
    path: Path
    reused: bool
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def library_versions() -> dict[str, str]:
    """Versions of the libraries that change the numbers (convolutions, architectures, resizing)."""
    import PIL
    import timm
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "pillow": PIL.__version__}


def extraction_info(backbone: Backbone, extractor: Extractor, pool: str) -> CacheInfo:
    """What decides an image's features, the dataset aside: the backbone, its weights, the layers, the pooling, the
    preprocessing, the precision and the library versions (`dataset` left empty)."""
    preprocess = backbone.preprocess.to_dict()
    padded = backbone.preprocess.crop_mode == "border"
    preprocess["small_images"] = ("long side to the crop size, padded (PIL)" if padded else
                                  "enlarged to the crop size, not cropped (PIL's filter, float32, a batch at once)")
    preprocess["orientation"] = "EXIF orientation applied"
    if extractor.model.flip:  # only then: the identity of every entry without it stays what it was
        preprocess[FLIP_KEY] = "features averaged with those of the image mirrored left-right"
    return CacheInfo(
        dataset="", dataset_fingerprint="", backbone=backbone.name, weights=backbone.weights,
        weights_sha256=backbone.weights_sha256, layer=",".join(name for name, _, _ in extractor.layout),
        layer_module=extractor.model.layer_modules, layout=[list(entry) for entry in extractor.layout], pool=pool,
        image_size=backbone.preprocess.crop_size, precision=extractor.precision, transform=preprocess,
        versions=library_versions())


def provenance(dataset: Dataset, backbone: Backbone, extractor: Extractor, pool: str) -> CacheInfo:
    """What a cache entry records before any feature is computed: everything that decides its features, and how to
    read them."""
    return dataclasses.replace(
        extraction_info(backbone, extractor, pool), dataset=dataset.slug, dataset_fingerprint=dataset.fingerprint,
        class_names=dataset.class_names, dataset_source=dataset.source, limit_per_class=dataset.limit_per_class or 0,
        train_per_class=dataset.train_per_class or 0)


def _stale_siblings(path: Path) -> list[Path]:
    """Entries with the same readable name but another identity hash: same request, changed inputs."""
    prefix = path.name.rsplit("__", 1)[0]
    return [p for p in path.parent.glob(f"{prefix}__*{SUFFIX}") if p != path]


def extract_to_cache(request: ExtractRequest, log: Callable[[str], None] = _logger.info) -> ExtractResult:
    """Return the cache entry for `request`, computing it only if no complete matching entry exists.

    Under torchrun each rank computes its contiguous share into its own part file, then rank 0 merges the
    parts into the one entry a single process would have written."""
    ranks = world(request.settings.device)
    dataset = resolve_dataset(request.dataset, request.data_root, request.limit_per_class,
                              train_per_class=request.train_per_class)
    if dataset.note and ranks.is_main:
        log(dataset.note)
    backbone = create_backbone(request.backbone, request.weights, request.image_size)
    extractor = Extractor(backbone, request.pool, request.settings, request.layers, request.flip)
    info = provenance(dataset, backbone, extractor, request.pool)
    path = Path(request.cache_dir) / f"{entry_name(info)}{SUFFIX}"
    if path.exists() and not request.force:
        log(f"reusing {path} (same dataset, weights, layer, pooling and transform; --force recomputes)")
        return ExtractResult(path, reused=True)
    donors = []
    for sibling in _stale_siblings(path) if ranks.is_main else ():
        changed = identity_changes(sibling, info)
        if changed == ["dataset_fingerprint"] and not request.force and not ranks.distributed:
            donors.append(sibling)
            continue
        reason = (f"its {' and '.join(changed)} {'differs' if len(changed) == 1 else 'differ'}" if changed
                  else "the dataset files, weights or library versions differ")
        log(f"not reusing {sibling.name}: {reason}; computing a new entry")
    if ranks.distributed:
        return _compute_sharded(dataset, extractor, info, path, request.skip_bad, ranks, log)
    with CacheLock(path):
        donor = _row_donor(max(donors, key=lambda p: p.stat().st_mtime_ns), dataset, log) if donors else None
        try:
            return _compute(dataset, extractor, info, path, request.skip_bad, log, progress=request.progress,
                            donor=donor)
        finally:
            if donor:
                donor.close()


def _row_donor(sibling: Path, dataset: Dataset, log: Callable[[str], None]) -> RowDonor | None:
    """The newest entry of this request for an earlier state of the dataset, where it holds rows of files that
    have not changed since."""
    try:
        donor = RowDonor(sibling, _split_rows(dataset))
    except (OSError, KeyError) as error:  # damaged since it was written, or removed meanwhile
        log(f"not reusing {sibling.name}: it cannot be read ({error}); computing a new entry")
        return None
    held = sum(int(donor.held(name).sum()) for name in dataset.splits)
    if not held:
        donor.close()
        log(f"not reusing {sibling.name}: its dataset fingerprint differs and it holds no image file unchanged "
            "(files of earlier versions are not recorded); computing a new entry")
        return None
    total = sum(len(split) for split in dataset.splits.values())
    log(f"{sibling.name} was made from an earlier state of this dataset: taking the features of the {held} of "
        f"{total} image files it holds unchanged (same path, size and modification time), computing "
        f"{total - held}")
    return donor


def _split_rows(dataset: Dataset) -> dict[str, SplitRows]:
    return {name: SplitRows(split.ids, split.labels, split.stamps) for name, split in dataset.splits.items()}


def _compute_sharded(dataset: Dataset, extractor: Extractor, info: CacheInfo, path: Path, skip_bad: bool,
                     ranks: World, log: Callable[[str], None]) -> ExtractResult:
    """This rank's rows of every split into `<entry>.parts/rankR-of-N.h5` (resumable like any entry), then
    rank 0 joins the parts in rank order. Shares are cut at batch boundaries: same batches, same numbers."""
    started = time.perf_counter()
    parts = [path.with_suffix(".parts") / f"rank{r}-of-{ranks.size}{SUFFIX}" for r in range(ranks.size)]
    own = parts[ranks.rank]
    batch = extractor.settings.batch_size
    share = dataclasses.replace(dataset, splits={
        name: split.rows(*shard(len(split), batch, ranks.rank, ranks.size)) for name, split in dataset.splits.items()})

    def rank_log(message: str) -> None:
        log(f"[rank {ranks.rank}/{ranks.size}] {message}")

    if own.exists():
        rank_log(f"reusing {own} (this rank's share is complete)")
    else:
        with CacheLock(own):
            _compute(share, extractor, info, own, skip_bad, rank_log, progress=ranks.is_main)
    ranks.barrier()
    images = sum(len(split) for split in dataset.splits.values())
    if ranks.is_main:
        with CacheLock(path):
            seconds = time.perf_counter() - started
            merge_parts(path, info, _split_rows(dataset),
                        extractor.feature_dim(), parts, extract_seconds=seconds,
                        images_per_second=images / max(seconds, 1e-9), ranks=ranks.size,
                        compiled=extractor.compiled)
        shutil.rmtree(own.parent)
        log(f"wrote {path} ({images} images on {ranks.size} ranks in {seconds:.1f} s, "
            f"{images / max(seconds, 1e-9):.1f} images/s)")
    ranks.barrier()
    return ExtractResult(path, reused=False, images=images, seconds=time.perf_counter() - started)


@contextlib.contextmanager
def interrupt_between_batches() -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) is noted, not raised where it lands (inside an HDF5 call, it could be lost or tear the
    file); the loop stops after the batch it is writing. The yielded list is non-empty once Ctrl-C was pressed."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def _compute(dataset: Dataset, extractor: Extractor, info: CacheInfo, path: Path, skip_bad: bool,
             log: Callable[[str], None], progress: bool = True, donor: RowDonor | None = None) -> ExtractResult:
    writer = CacheWriter(path, info, _split_rows(dataset), extractor.feature_dim())
    try:
        todo = {name: len(split) - writer.rows_written(name) for name, split in dataset.splits.items()}
        if donor:
            todo = {name: int((~donor.held(name)[writer.rows_written(name):]).sum()) for name in todo}
        if writer.resumed:
            log(f"resuming {writer.partial_path.name}: {sum(todo.values())} images left")
        device = extractor.device.type
        log(f"extracting {info.backbone} {info.layer}-{info.pool} features of {dataset.name} "
            f"({', '.join(f'{n} {len(s)}' for n, s in dataset.splits.items())}) on {device}, "
            f"{info.image_size} px, {info.precision}")
        if dataset.test_copies:
            log(copies_warning(dataset.test_copies))
        started, done, unreadable = time.perf_counter(), 0, 0  # the time includes compiling, if any
        compiled = extractor.compile_if_it_pays(sum(todo.values()))
        if compiled:
            log(compiled)
        with tqdm(total=sum(todo.values()), unit="img", file=sys.stderr, dynamic_ncols=True,
                  disable=not progress) as bar, interrupt_between_batches() as interrupted:
            for name, split in dataset.splits.items():
                bar.set_description(name)
                for row, features, errors, computed in _rows_in_order(extractor, split, writer.rows_written(name),
                                                                      donor):
                    if errors and not skip_bad:
                        listed = "; ".join(reason for _, reason in errors[:5])
                        raise UsageError(f"cannot read {len(errors)} image(s): {listed}; fix or remove them, or "
                                         f"pass --skip-bad to leave them out (features so far are kept)")
                    writer.write(name, row, features, [sample_id for sample_id, _ in errors])
                    if errors:
                        unreadable += len(errors)
                        with tqdm.external_write_mode(file=sys.stderr):  # its own line, above the bar
                            log(f"skipped unreadable: {'; '.join(reason for _, reason in errors)}")
                    bar.update(computed)
                    done += computed
                    if interrupted:
                        raise KeyboardInterrupt
        seconds = time.perf_counter() - started
        final = writer.finish(extract_seconds=seconds, images_per_second=done / max(seconds, 1e-9),
                              compiled=extractor.compiled, test_copies_of_train=len(dataset.test_copies),
                              rows_reused_from=donor.path.name if donor else "")
    finally:
        writer.close()
    left_out = f"; {unreadable} unreadable, left out" if unreadable else ""
    if donor:
        left_out += f"; {sum(len(split) for split in dataset.splits.values()) - done} taken from the earlier entry"
    log(f"wrote {final} ({done} images in {seconds:.1f} s, {done / max(seconds, 1e-9):.1f} images/s{left_out})")
    if donor:
        log(f"the earlier entry {donor.path} ({donor.path.stat().st_size / 1e6:.1f} MB) is kept: remove it once "
            "nothing reads it (models trained on it keep working without it)")
    return ExtractResult(final, reused=False, images=done, seconds=seconds)


def _rows_in_order(extractor: Extractor, split: Split, start: int, donor: RowDonor | None
                   ) -> Iterator[tuple[int, np.ndarray, list[tuple[str, str]], int]]:
    """(first row, features, unreadable images, how many of the rows the network computed) from row `start` to the
    end, in row order: the donor's rows where it holds the image unchanged, the network's for the others."""
    if donor is None:
        for row, features, errors in extractor.split_features(split, start):
            yield row, features, errors, len(features)
        return
    missing = start + np.flatnonzero(~donor.held(split.name)[start:])
    row = start
    for first, features, errors in extractor.split_features(split.subset(missing)) if len(missing) else ():
        positions = missing[first:first + len(features)]
        runs = np.split(np.arange(len(positions)), np.flatnonzero(np.diff(positions) != 1) + 1)
        for n, run in enumerate(runs):  # each run of consecutive rows after the held rows before it
            for held_row, held in donor.rows(split.name, row, int(positions[run[0]])):
                yield held_row, held, [], 0
            yield int(positions[run[0]]), features[run], errors if n == 0 else [], len(run)
            row = int(positions[run[-1]]) + 1
    for held_row, held in donor.rows(split.name, row, len(split)):
        yield held_row, held, [], 0


def extract(backbone: str = DEFAULT_BACKBONE, dataset: str = "", *, weights: str | None = None,
            layers: str = DEFAULT_LAYER, pool: str = "avg", flip: bool = False, image_size: int | None = None,
            limit_per_class: int | None = None, data_root: str = "data", cache_dir: str = DEFAULT_CACHE_DIR,
            force: bool = False, skip_bad: bool = False, batch_size: int | None = None, device: str = "auto",
            precision: str = "fp32", workers: int | None = None, compile: str = "auto", progress: bool = False,
            log: Callable[[str], None] = _logger.info) -> ExtractResult:
    """`python -m extract BACKBONE DATASET [options]` from Python, with the same defaults: the cache entry of these
    features (`result.path`, for `open_cache`), computed only where no complete matching entry exists. Lines go to
    `log` (the `logging` module's by default); `progress` shows a bar over the images on stderr, as the CLI does.

        result = extract("efficientnet_lite0", "examples/cifar10-mini")
        x_train, y_train, ids = open_cache(result.path).load("train")
    """
    settings = ExtractionSettings(batch_size=batch_size, device=device, precision=precision, workers=workers,
                                  compile=compile)
    return extract_to_cache(ExtractRequest(
        backbone=backbone, dataset=dataset, weights=weights, pool=pool, layers=layers, flip=flip,
        image_size=image_size, limit_per_class=limit_per_class, data_root=data_root, cache_dir=cache_dir,
        force=force, skip_bad=skip_bad, settings=settings, progress=progress), log=log)


def verify_cache(path: str, data_root: str = "data") -> list[tuple[str, bool, str]]:
    """The file's integrity, then its provenance: are the weights and the dataset still what made it?"""
    from extract.store import check_file, open_cache

    rows = check_file(path)
    if not rows[0][1]:
        return rows
    info = open_cache(path).info
    try:
        backbone = create_backbone(info.backbone, info.weights, info.image_size)
        rows.append(("weights sha256 matches", backbone.weights_sha256 == info.weights_sha256,
                     f"{info.weights}: {info.weights_sha256[:16]}..."))
    except UsageError as error:
        rows.append(("weights available", False, str(error)))
    source = info.dataset_source or None
    try:
        dataset = resolve_dataset(source, data_root, info.limit_per_class or None, download=False,
                                  train_per_class=info.train_per_class or None)
        rows.append(("dataset fingerprint matches", dataset.fingerprint == info.dataset_fingerprint,
                     f"{source}: files, sizes, mtimes and labels"))
    except (UsageError, TypeError) as error:
        rows.append(("dataset available", False, f"{source}: {error}"))
    versions = info.versions
    now = library_versions()
    rows.append(("library versions match", versions == now,
                 ", ".join(f"{k} {versions.get(k)}" + ("" if versions.get(k) == v else f" (now {v})")
                           for k, v in now.items())))
    return rows
