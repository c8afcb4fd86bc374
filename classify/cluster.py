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
# joblib's own progress lines on stderr ("Done 9 tasks | elapsed: 4.2s"), at gaps that grow with the square root of
# the tasks dispatched: a handful of lines for a sweep, so that a minutes-long search is not silent
PROGRESS_VERBOSITY = 10


@contextlib.contextmanager
def sweep_backend(backend: str = "local", scheduler: str | None = None,
                  log=lambda message: None) -> Iterator[None]:
    """A context in which joblib (and so GridSearchCV with n_jobs) runs its tasks on `backend`, reporting progress."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "local":
        if scheduler:
            raise UsageError("--scheduler goes with --backend dask")
        with joblib.parallel_config(verbose=PROGRESS_VERBOSITY):
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
        with joblib.parallel_config(backend="dask", verbose=PROGRESS_VERBOSITY):
            yield
