"""``make gpu-check`` on a machine without CUDA: a clear reason and exit 0 (issue 17, item 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: gpu-check runs for real")
def test_gpu_check_says_why_it_skips_and_exits_0():
    root = Path(__file__).parents[1]
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gpu-check skipped:" in proc.stdout and ("CPU build" in proc.stdout or "no device" in proc.stdout)
