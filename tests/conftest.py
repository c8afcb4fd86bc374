"""Shared fixtures: a small real image set (CIFAR-10 JPEGs shipped in examples/) and one extracted cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from extract.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "cifar10-mini"
# Small input size and few images keep the suite fast on 2 cores; the weights are the real ones.
QUICK = ["--image-size", "96", "--limit-per-class", "6", "--workers", "0"]


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A private copy of the sample image folder, so tests may modify it."""
    target = tmp_path_factory.mktemp("data") / "cifar10-mini"
    shutil.copytree(SAMPLE, target)
    return target


@pytest.fixture(scope="session")
def lite_cache(sample_dir, tmp_path_factory) -> Path:
    """efficientnet_lite0 features of the sample, extracted once through the CLI."""
    from extract.__main__ import main

    cache_dir = tmp_path_factory.mktemp("cache")
    assert run_cli(main, ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(cache_dir), *QUICK]) == 0
    (path,) = cache_dir.glob("*.h5")
    return path


def placeholder_info(**fields):
    """A cache entry's `CacheInfo` with placeholder identity fields, for files written without images behind them."""
    from extract.store import IDENTITY_FIELDS, CacheInfo

    return CacheInfo(**{**{name: "x" for name in IDENTITY_FIELDS}, "transform": {}, "versions": {}, **fields})


def run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a CLI main in-process the way `python -m` does; return exit code, stdout, stderr."""
    code = run_cli(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def layers_cache(sample_dir, tmp_path_factory) -> Path:
    """efficientnet_lite0 features of the sample at every layer and the logits, in one file."""
    from extract.__main__ import main

    cache_dir = tmp_path_factory.mktemp("layers")
    assert run_cli(main, ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(cache_dir), *QUICK,
                          "--layers", "all,logits"]) == 0
    (path,) = cache_dir.glob("*.h5")
    return path
