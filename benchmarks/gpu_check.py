"""``make gpu-check``: prove recemb's CUDA paths and measure them on one GPU (issue 17, item 5).

1. ``pytest -m gpu``: every model trained on the GPU learns what it learns on the CPU
   (tests/test_gpu.py: two-tower fused tables under DMP with NCCL, the item2vec torch
   kernel, the sequence model, the content CNN; tests/test_item2vec.py's CUDA test).
2. A throughput table from the real pipeline on a synthetic dataset (``--events``,
   ``--items``, item images on), every training stage on ``cuda``: item2vec (torch kernel,
   events/s), two-tower (torchrec fused, samples/s), sequence model, content encoder with
   the image CNN (seconds per epoch).

Where no CUDA device is visible (a CPU build of torch, or no GPU) it says why and exits 0,
so the target can sit in any checklist. Budget: under 8 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def no_cuda_reason() -> str | None:
    import torch

    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU build; install the CUDA builds of torch and fbgemm-gpu "
            "(the versions in requirements/) to check the GPU paths"
        )
    if not torch.cuda.is_available():
        return "torch has CUDA but no device is visible (CUDA_VISIBLE_DEVICES, driver)"
    return None


def pipeline_throughput(events: int, items: int, workdir: Path) -> list[tuple[str, str, str]]:
    """Train every model on cuda through ``recemb pipeline``; one row per stage from its metrics."""
    cfg = {
        "run": {"name": "gpu", "dir": str(workdir)},
        "data": {"source": "synth", "synth": {"users": max(1000, events // 50), "items": items, "events": events}},
        "item2vec": {"epochs": 2, "backend": "torch", "device": "cuda"},
        "two_tower": {"epochs": 2, "device": "cuda"},
        "sequence": {"epochs": 2, "device": "cuda"},
        "content": {"epochs": 2, "image": True, "device": "cuda"},
        "stages": ["data", "item2vec", "two_tower", "sequence", "content"],
    }
    path = workdir / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recemb.cli", "pipeline", str(path)], cwd=ROOT, check=True)
    print(f"pipeline: {time.perf_counter() - t0:.0f} s")
    run = workdir / "gpu"
    rows = []
    for model, key, unit in (
        ("item2vec", "events_per_s", "events/s"),
        ("two_tower", "samples_per_s", "samples/s"),
        ("sequence", "samples_per_s", "samples/s"),
    ):
        m = json.loads((run / model / "metrics.json").read_text())
        last = m["epochs"][-1]
        value = f"{last[key]:,.0f} {unit}" if key in last else f"{m.get('train_seconds', float('nan')):.1f} s"
        rows.append((model, str(m.get("device", m.get("backend", "cuda"))), value))
    content = json.loads((run / "content" / "metrics.json").read_text())
    rows.append(("content (text + image CNN)", str(content.get("device")), f"{content['train_seconds']:.1f} s total"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--items", type=int, default=5_000)
    args = ap.parse_args()
    why = no_cuda_reason()
    if why:
        print(f"gpu-check skipped: {why}")
        return 0
    code = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests/test_gpu.py", "tests/test_item2vec.py"], cwd=ROOT
    ).returncode
    with tempfile.TemporaryDirectory(prefix="recemb-gpu-") as tmp:
        rows = pipeline_throughput(args.events, args.items, Path(tmp))
    print(f"\n{args.events:,} synthetic events, {args.items:,} items, one GPU")
    print("| stage | device | throughput |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return code


if __name__ == "__main__":
    sys.exit(main())
