"""Where GridSearchCV's fits run: on this machine (joblib's processes) or on a Dask cluster.

Dask, not Ray: scikit-learn's searches parallelise through joblib, and Dask's joblib backend sends each fit to
the cluster's workers unchanged (scikit-learn documents it); Dask is pure Python, a small install, and a cluster is
two commands (`dask scheduler`, `dask worker ADDRESS`) on machines that have this toolkit installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import joblib

from extract.errors import UsageError

BACKENDS = ("local", "dask")


@contextlib.contextmanager
def fits_bar(total: int, description: str, show: bool = True) -> Iterator[None]:
    """A tqdm bar over the fits of the search run inside (joblib's completed tasks), instead of joblib's lines.

    joblib reports each completed task to `Parallel.print_progress`, which prints only with `verbose`: for the time
    of the search it updates the bar instead, for the first Parallel that reports (the search's own, not a
    calibration's inside a fit), and is put back after."""
    if not show:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="fit", leave=False)
    original, outer = joblib.Parallel.print_progress, []

    def progress(self) -> None:
        outer.append(self) if not outer else None
        if self is outer[0]:
            bar.update(self.n_completed_tasks - bar.n)

    joblib.Parallel.print_progress = progress
    try:
        yield
        bar.update(bar.total - bar.n)  # joblib reports its last tasks after the search has read their results
        bar.refresh()  # drawn even within tqdm's minimum interval: closing clears the bar without drawing it
    finally:
        joblib.Parallel.print_progress = original
        bar.close()


@contextlib.contextmanager
def sweep_backend(backend: str = "local", scheduler: str | None = None,
                  log=lambda message: None) -> Iterator[None]:
    """A context in which joblib (and so GridSearchCV with n_jobs) runs its tasks on `backend`."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "local":
        if scheduler:
            raise UsageError("--scheduler goes with --backend dask")
        yield
        return
    if not scheduler:
        raise UsageError("--backend dask needs --scheduler ADDRESS, the address a running `dask scheduler` prints "
                         "(tcp://HOST:8786)")
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("--backend dask needs Dask: pip install 'distributed>=2024.1'") from None
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as error:
        raise UsageError(f"cannot reach a Dask scheduler at {scheduler} ({error}); start one with `dask scheduler` "
                         "and workers with `dask worker ADDRESS`") from None
    with client:
        workers = client.scheduler_info()["workers"]
        threads = sum(w["nthreads"] for w in workers.values())
        log(f"sweep on the Dask cluster at {scheduler}: {len(workers)} workers, {threads} threads")
        with joblib.parallel_config(backend="dask"):
            yield
