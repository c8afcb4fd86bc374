"""Beyond one process: torchrun extraction and fine-tuning (gloo on CPU), GridSearchCV on a Dask cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classify.cluster import sweep_backend
from classify.train import train_head
from extract.distributed import shard
from extract.errors import UsageError
from extract.store import open_cache

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# one thread per process in both runs: the same kernels, so the same numbers bit for bit
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _extract_args(dataset: Path, cache_dir: Path) -> list[str]:
    return ["efficientnet_lite0", str(dataset), "--cache-dir", str(cache_dir), "--image-size", "96",
            "--limit-per-class", "5", "--batch-size", "8", "--workers", "0"]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=ONE_THREAD, timeout=300)


def test_shards_are_contiguous_whole_batches_covering_every_row():
    for length, batch, size in [(70, 16, 2), (5, 8, 2), (1000, 64, 3), (64, 64, 4)]:
        shares = [shard(length, batch, rank, size) for rank in range(size)]
        assert shares[0][0] == 0 and shares[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:], strict=False))
        assert all(start % batch == 0 for start, _ in shares)


def _same_cache(a: Path, b: Path) -> None:
    first, second = open_cache(a), open_cache(b)
    assert first.path.name == second.path.name  # the same entry: the same identity
    for split in ("train", "test"):
        (fa, la, ia), (fb, lb, ib) = first.load(split), second.load(split)
        assert list(ia) == list(ib) and np.array_equal(la, lb)
        assert np.array_equal(fa, fb)


def test_torchrun_extraction_gives_the_one_process_cache(tmp_path, sample_dir):
    distributed = _run([*TORCHRUN, "-m", "extract", *_extract_args(sample_dir, tmp_path / "two")])
    assert distributed.returncode == 0, distributed.stderr
    (merged,) = (tmp_path / "two").glob("*.h5")
    assert distributed.stdout.strip() == str(merged)  # printed once, by rank 0
    # the per-rank parts are gone; the entries' empty lock files stay by design (extract/paths.py)
    assert [p for p in (tmp_path / "two").iterdir() if p.suffix != ".lock"] == [merged]
    assert open_cache(merged).info.ranks == 2
    single = _run([sys.executable, "-m", "extract", *_extract_args(sample_dir, tmp_path / "one")])
    assert single.returncode == 0, single.stderr
    (reference,) = (tmp_path / "one").glob("*.h5")
    _same_cache(merged, reference)


def test_torchrun_extraction_resumes_per_rank(tmp_path, sample_dir):
    """Rank 1 stops on an unreadable image at the end of its share; the rerun resumes its part from the rows it
    wrote (rank 0's part, finished or not, is reused or resumed the same way) and the result is unchanged."""
    dataset = tmp_path / "data"
    shutil.copytree(sample_dir, dataset)
    last_class = sorted((dataset / "test").iterdir())[-1]
    (last_class / "0000.jpg").write_bytes(b"not a jpeg")
    args = _extract_args(dataset, tmp_path / "cache")
    failed = _run([*TORCHRUN, "-m", "extract", *args])
    assert failed.returncode != 0 and "cannot read 1 image(s)" in failed.stderr
    (parts,) = (tmp_path / "cache").glob("*.parts")
    assert (parts / "rank1-of-2.h5.partial").exists()
    resumed = _run([*TORCHRUN, "-m", "extract", *args, "--skip-bad"])
    assert resumed.returncode == 0, resumed.stderr
    assert "[rank 1/2] resuming" in resumed.stderr
    (merged,) = (tmp_path / "cache").glob("*.h5")
    assert not parts.exists()
    single = _run([sys.executable, "-m", "extract", *args[:3], str(tmp_path / "one"), *args[4:], "--skip-bad"])
    assert single.returncode == 0, single.stderr
    _same_cache(merged, next((tmp_path / "one").glob("*.h5")))


def test_torchrun_finetune_trains_with_ddp_and_writes_one_checkpoint(tmp_path, sample_dir):
    out = tmp_path / "run"
    result = _run([*TORCHRUN, "-m", "pipelines", "finetune", "efficientnet_lite0", str(sample_dir), "--mode",
                   "partial", "--epochs", "1", "--image-size", "64", "--limit-per-class", "6", "--workers", "0",
                   "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert "2 processes" in result.stderr
    assert result.stdout.count("test accuracy") == 1  # rank 0 reports
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    assert (out / "result.json").exists()


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster


def test_sweep_on_a_dask_cluster_finds_the_local_best(dask_cluster, lite_cache):
    from dask.distributed import Client, get_task_stream

    local = train_head(lite_cache, "logreg", grid_text="C=0.001,0.1,10", cv=2, log=lambda m: None)
    with Client(dask_cluster.scheduler_address) as client, get_task_stream(client) as tasks:
        remote = train_head(lite_cache, "logreg", grid_text="C=0.001,0.1,10", cv=2, backend="dask",
                            scheduler=dask_cluster.scheduler_address, log=lambda m: None)
    assert remote.best_params == local.best_params
    assert [e["mean_cv_accuracy"] for e in remote.cv_scores] == pytest.approx(
        [e["mean_cv_accuracy"] for e in local.cv_scores])
    assert len({task["worker"] for task in tasks.data}) == 2  # the fits ran on the cluster's workers


def test_sweep_backend_mistakes_are_one_line_errors():
    with pytest.raises(UsageError, match="--backend must be one of local, dask"), sweep_backend("spark"):
        pass
    with pytest.raises(UsageError, match="needs --scheduler ADDRESS"), sweep_backend("dask"):
        pass
    with pytest.raises(UsageError, match="--scheduler goes with --backend dask"), sweep_backend("local", "tcp://x:1"):
        pass
    with pytest.raises(UsageError, match="cannot reach a Dask scheduler at tcp://127.0.0.1:9"), \
            sweep_backend("dask", "tcp://127.0.0.1:9"):
        pass
