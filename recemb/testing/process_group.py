"""Run a function on every rank of a real multi-process gloo group, for tests of collective code.

    results = run_in_group(check_ranks, world_size=2, timeout_s=60)   # [rank 0's return, rank 1's return]

Each rank is a fresh ``spawn``-ed process that joins a ``torch.distributed``
gloo group through a file store in a temporary directory (no port to pick,
nothing listens on the network). The group's collective timeout is
``timeout_s``, so a collective that some rank never reaches raises instead of
waiting forever, and the whole call is bounded by ``timeout_s`` plus start-up:
a test of collective code fails rather than hangs. ``fn`` must be importable
by name (a module-level function), as ``spawn`` requires.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

START_SECONDS = 120  # importing torch + torchrec in a fresh process on a busy 2-core machine


def _member(fn: Callable[..., Any], rank: int, world_size: int, store: str, timeout_s: float, out, args) -> None:
    import torch.distributed as dist

    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        try:
            # Plain pickle bytes: the queue's own pickler would pass tensors as shared-memory
            # handles that die with this process before the parent reads them.
            out.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:
        out.put((rank, False, traceback.format_exc()))


def run_in_group(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 60) -> list[Any]:
    """``[fn(rank, world_size, *args) for every rank]``, each rank in its own process of one gloo group.

    Raises:
        RuntimeError: a rank raised (its traceback in the message), died, or did not finish in time.
    """
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="recemb-group-") as tmp:
        store = str(Path(tmp) / "store")
        procs = [
            ctx.Process(target=_member, args=(fn, rank, world_size, store, timeout_s, out, args), daemon=True)
            for rank in range(world_size)
        ]
        for p in procs:
            p.start()
        results: dict[int, Any] = {}
        try:
            while len(results) < world_size:
                try:
                    rank, ok, value = out.get(timeout=timeout_s + START_SECONDS)
                except queue.Empty:
                    missing = sorted(set(range(world_size)) - set(results))
                    raise RuntimeError(f"ranks {missing} did not finish within {timeout_s + START_SECONDS} s") from None
                if not ok:
                    raise RuntimeError(f"rank {rank} failed:\n{value}")
                results[rank] = pickle.loads(value)  # written by our own child process
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
    return [results[r] for r in range(world_size)]
