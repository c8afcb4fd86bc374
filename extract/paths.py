"""The file system as the registry, the feature store and the saved heads use it: names in paths, digests, the
lock on a cache entry, free space.

Free of torch, so that `python -m classify` on a cache starts without importing it (1 s instead of 4)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from extract.errors import UsageError, make_folder


def name_in_paths(name: str) -> str:
    """A backbone name as one part of a file or folder name: timm/ARCH.TAG -> timm-ARCH.TAG."""
    return name.replace("/", "-")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CacheLock:
    """An exclusive lock on one cache entry, so two processes never write the same file (filelock: fcntl on POSIX,
    msvcrt on Windows). The holder's PID sits beside it, for the message another process gets."""

    def __init__(self, path: Path):
        self.entry = path
        self.path = path.with_suffix(".lock")
        self.pid_path = path.with_suffix(".pid")
        self.lock = FileLock(self.path, timeout=0)

    def __enter__(self) -> CacheLock:
        make_folder(self.path.parent, "--cache-dir")
        try:
            self.lock.acquire()
        except Timeout:
            try:
                holder = self.pid_path.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise UsageError(f"another process (PID {holder}) is writing {self.entry.name}; "
                             "wait for it to finish, then run again") from None
        self.pid_path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        # the lock file stays (as filelock intends): deleted after release, a process that locked it in between and
        # one that then creates a new file would both hold "the" lock
        self.pid_path.unlink(missing_ok=True)
        self.lock.release()


def check_free_space(directory: Path, needed: int) -> None:
    """Refuse to start a file the disk (or the process's file-size limit) cannot hold."""
    make_folder(directory, "--cache-dir")
    free = shutil.disk_usage(directory).free
    try:
        import resource  # POSIX only
    except ImportError:
        resource = None
    soft_limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else -1
    if resource and soft_limit != resource.RLIM_INFINITY:
        free = min(free, soft_limit)
    if needed > free:
        raise UsageError(f"the features need {needed / 1e6:.1f} MB but only {free / 1e6:.1f} MB can be written in "
                         f"{directory}; free some space or pass --cache-dir on another disk")
