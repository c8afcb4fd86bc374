"""python -m extract BACKBONE DATASET: frozen pretrained features of a dataset, cached in HDF5."""

from __future__ import annotations

import argparse
import json
import sys

from extract.distributed import shutdown, world
from extract.errors import UsageError, exit_cli
from extract.features import COMPILE_MIN_IMAGES, COMPILE_MODES, ExtractionSettings
from extract.layers import DEFAULT_LAYER, POOLS
from extract.options import add_data_arguments, add_device_argument, add_json_argument, add_skip_bad_argument
from extract.run import ExtractRequest, extract_to_cache
from extract.runtime import PRECISIONS, keep_freed_memory
from extract.store import DEFAULT_CACHE_DIR

EPILOG = """examples:
  python -m extract efficientnet_lite0 examples/cifar10-mini   offline weights, a folder with train/ and test/
  python -m extract resnet18 cifar10                          torchvision weights and dataset (downloads once)
  python -m extract resnet18 path/to/photos --weights none    random init (a scratch baseline)
  python -m extract vgg16 path/to/photos --pool max           max-pooled last conv features
  python -m extract efficientnet_lite0 cifar10 --flip         features averaged with the mirror image's
  python -m extract efficientnet_lite0,efficientnet_lite1,efficientnet_lite2 cifar10   an ensemble's members, each
                                                              its own cache entry (then: classify svm A B C)
  python -m extract timm/vit_small_patch14_dinov2 cifar10 --image-size 224   any timm model, Hub weights
  python -m extract resnet18 digits --layers stage3,stage4,penultimate   three layers, one pass, one file
  python -m extract --list                                    every backbone with its size and ImageNet top-1
  torchrun --nproc-per-node 4 -m extract resnet50 DATASET     4 processes (GPUs), each a contiguous share, one file

The features land in --cache-dir as one HDF5 file per (dataset, backbone, weights, layer, pooling, input
size); running the same command again reuses it without touching the network, and after images were added,
moved or edited, only those go through the network again. Then: python -m classify svm
Guide: docs/extract.md (backbones, layers, preprocessing, datasets) and docs/cache.md (the file, reuse, resume).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extract", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", nargs="?", help="backbone name (see --list), e.g. efficientnet_lite0, resnet18, or "
                             "timm/ARCH[.TAG] for any timm model (timm.list_pretrained() names them); several "
                             "separated by commas extract an ensemble's members, each to its own cache entry")
    parser.add_argument("dataset", nargs="?",
                        help="torchvision dataset name (cifar10, ...), 'digits', a folder with train/ and test/ "
                             "(or val/) holding one subfolder per class (a folder of class folders alone has 25%% of "
                             "each class held out as test), or a CSV/TSV table with image and label columns and an "
                             "optional split column")
    parser.add_argument("--list", action="store_true", help="print the table of backbones and exit")
    parser.add_argument("--verify", metavar="CACHE_FILE",
                        help="check a cache file's integrity and provenance (weights, dataset, versions); exit 1 if "
                             "a check fails")
    parser.add_argument("--weights", default=None,
                        help="'default' (pretrained, the default), 'none' (random init), a weights name such as "
                             "IMAGENET1K_V2 (torchvision) or a pretrained tag such as fb_in22k (timm), or a path to a "
                             "local state-dict file")
    parser.add_argument("--layers", default=DEFAULT_LAYER,
                        help="layers to read, comma-separated, all in one pass and one file: stageK (the output of "
                             "the last block at stride 2**K: stage2 ... stage5), penultimate (the default: what the "
                             "classifier sees), logits (the ImageNet class scores), or 'all' (every stage and "
                             "penultimate). An earlier layer suits data far from ImageNet. `python -m extract "
                             "BACKBONE --layers list` names them with their modules")
    parser.add_argument("--pool", choices=POOLS, default="avg",
                        help="global pooling of each spatial feature map: avg (default), max, or avgmax (both, "
                             "side by side)")
    parser.add_argument("--flip", action="store_true",
                        help="average each image's features with those of its left-right mirror image (test-time "
                             "augmentation): twice the extraction time; on CIFAR-10 the heads score higher (see the "
                             "README); part of the cache key, and `classify predict` does the same")
    add_data_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: 16 on a CPU, where it runs faster than larger "
                             "batches, 64 on a GPU)")
    add_device_argument(parser)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="compute precision of the backbone (default fp32); auto picks bf16 where the CPU or GPU "
                             "computes it natively (AVX512-BF16/AMX, CUDA with bf16; about 2x faster here, features "
                             "at cosine 0.998 to fp32), else fp32; part of the cache key")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                        help=f"torch.compile the backbone: auto (default) does it from {COMPILE_MIN_IMAGES} images, "
                             "where its start-up time (5-10 s) pays back; same features either way")
    parser.add_argument("--workers", type=int, default=None,
                        help="image-decoding processes (default: on a CPU of 2 cores or fewer, 0, or 2 where the "
                             "first image has a megapixel or more; else cores - 1, up to 8; with a GPU every core, "
                             "up to 8)")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="where feature files go (default: cache/)")
    add_json_argument(parser)
    parser.add_argument("--force", action="store_true",
                        help="compute every image, even where a matching cache file (or an earlier one of the same "
                        "dataset) holds it")
    add_skip_bad_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # options may come between BACKBONE and DATASET
    keep_freed_memory()  # a process-wide setting: the CLI's to make, not the library's
    if args.list:
        from extract.catalog import backbone_table, format_table

        print(format_table(backbone_table(args.cache_dir)))
        print("\nand every timm model as timm/ARCH or timm/ARCH.TAG, its weights from the Hugging Face Hub "
              "(python -c 'import timm; print(timm.list_pretrained())' lists them)")
        return 0
    if args.verify:
        from extract.run import verify_cache

        rows = verify_cache(args.verify, args.data_root)
        for check, passed, detail in rows:
            print(f"{'ok  ' if passed else 'FAIL'}  {check}: {detail}")
        return 0 if all(passed for _, passed, _ in rows) else 1
    if args.backbone and args.layers == "list":
        from extract.catalog import layer_table

        print(layer_table(args.backbone))
        return 0
    if not args.backbone or not args.dataset:
        parser.print_usage(sys.stderr)
        print("error: give a BACKBONE and a DATASET (or --list)", file=sys.stderr)
        return 2
    from extract.backbones import backbone_source

    members = [name.strip() for name in args.backbone.split(",")]
    if "" in members or len(set(members)) < len(members):
        raise UsageError(f"backbones {args.backbone!r}: give each once, separated by commas, e.g. "
                         "efficientnet_lite0,efficientnet_lite1")
    for name in members:  # every name checked before any member is extracted
        backbone_source(name)
    paths, results = [], []
    try:
        for name in members:
            request = ExtractRequest(
                backbone=name, dataset=args.dataset, weights=args.weights, pool=args.pool, layers=args.layers,
                flip=args.flip, image_size=args.image_size, limit_per_class=args.limit_per_class,
                data_root=args.data_root, cache_dir=args.cache_dir, force=args.force, skip_bad=args.skip_bad,
                settings=ExtractionSettings(batch_size=args.batch_size, device=args.device, precision=args.precision,
                                            workers=args.workers, compile=args.compile))
            result = extract_to_cache(request, log=lambda message: print(message, file=sys.stderr))
            paths.append(str(result.path))
            results.append({"cache_file": str(result.path), "reused": result.reused, "images": result.images,
                            "seconds": result.seconds, "images_per_second": result.images_per_second})
            if world().is_main and not args.json:
                print(result.path)
    finally:
        shutdown()
    if args.json and world().is_main:
        print(json.dumps({"entries": results}))
    if len(paths) > 1 and world().is_main:
        print(f"an ensemble of {len(paths)} members: python -m classify svm {' '.join(paths)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_cli(main)
