"""bench/gpu_check.py, the GPU stage's one-command check: its CPU-side logic on tiny inputs."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO

SCRIPT = [sys.executable, str(REPO / "bench" / "gpu_check.py")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run its checks")
def test_without_cuda_it_says_so_in_one_line_and_checks_nothing():
    done = subprocess.run(SCRIPT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.count("\n") == 1 and "no CUDA GPU" in done.stdout


def test_on_the_cpu_it_prints_one_row_per_check_with_its_verdict():
    done = subprocess.run([*SCRIPT, "--device", "cpu", "--quick", "--only", "features,defaults"], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| check")}
    assert rows["features fp32"][0] == "pass" and "cosine to CPU fp32: mean 1.00000" in rows["features fp32"][1]
    assert rows["features bf16"][0] == "report" and "probe" in rows["features bf16"][1]
    assert rows["default device"] == ["pass", "cpu |"] and rows["default batch size"] == ["pass", "16 |"]
    bad = subprocess.run([*SCRIPT, "--device", "cpu", "--only", "magic"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown check magic" in bad.stderr
