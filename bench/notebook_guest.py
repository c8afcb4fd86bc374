"""What a notebook sees from library calls: the lines they print, and the process settings they change.

    python bench/notebook_guest.py [--tree PATH]

Runs, in one fresh process as a notebook cell would, `extract(...)`, `train_head(...)`, `FrozenFeatures(...)
.fit_transform(...)` (compiled, as a large set would be) on examples/cifar10-mini at 64 px, and reports: the lines
written to stdout and stderr (progress bars counted apart), matplotlib's backend, torch._dynamo's recompile limit,
and whether glibc's malloc thresholds were set (a call to `mallopt`, seen through ctypes). `--tree` runs the
toolkit of another checkout (for example `git worktree add /tmp/before HEAD~5`), to compare before and after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CELL = r"""
import contextlib, ctypes, io, json, sys
sys.path.insert(0, TREE)
calls = []
real_cdll = ctypes.CDLL


class Watched:
    def __init__(self, *args, **kwargs):
        self._lib = real_cdll(*args, **kwargs)

    def __getattr__(self, name):
        if name == "mallopt":
            calls.append(name)
        return getattr(self._lib, name)


ctypes.CDLL = Watched
import matplotlib
matplotlib.use("svg")  # the notebook's own backend
import torch._dynamo
limit = torch._dynamo.config.recompile_limit
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    from classify import train_head
    from extract import FrozenFeatures, extract
    result = extract("efficientnet_lite0", SAMPLE, image_size=64, cache_dir=CACHE, compile="on", workers=0)
    train_head(result.path, "logreg", "C=0.1", cv=2, n_jobs=1)
    images = sorted(str(p) for p in (__import__("pathlib").Path(SAMPLE) / "test" / "cat").glob("*.jpg"))[:4]
    FrozenFeatures(image_size=64, device="cpu").fit_transform(images)
lines = [line for text in (out.getvalue(), err.getvalue()) for line in text.replace("\r", "\n").splitlines()
         if line.strip()]
bars = [line for line in lines if "it/s" in line or "img/s" in line or "%|" in line]
print(json.dumps({"stdout lines": len(out.getvalue().splitlines()), "stderr lines (no bars)": len(lines) - len(bars),
                  "progress-bar updates": len(bars), "first lines": [l for l in lines if l not in bars][:6],
                  "matplotlib backend": matplotlib.get_backend(),
                  "dynamo recompile_limit": f"{limit} -> {torch._dynamo.config.recompile_limit}",
                  "mallopt called": bool(calls)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        code = (f"TREE = {str(args.tree)!r}\nSAMPLE = {str(REPO / 'examples' / 'cifar10-mini')!r}\n"
                f"CACHE = {cache!r}\n" + CELL)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cache)
    if done.returncode:
        sys.exit(done.stderr)
    for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
