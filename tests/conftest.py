"""Shared fixtures: tiny canonical tables and the real-data folder."""

from __future__ import annotations

import gc
import os
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Serve as docs/serving.md recommends: replicas also answer on their own ports (direct ingress),
# so the Serve test covers the proxy path and the direct one. Read when Ray starts.
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")

from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
import pytest  # noqa: E402

from recemb.data import schema  # noqa: E402
from recemb.data.paths import data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real datasets (DESIGN.md §10); skip if absent."""
    root = data_dir()
    if not root.exists():
        pytest.skip(f"real data folder {root} not found (set RECEMB_DATA_DIR)")
    return root


def make_events(rows: list[tuple], session: bool = False) -> pl.DataFrame:
    """Canonical events from ``(user, item, unix_seconds[, session])`` tuples."""
    cols = ["user_id", "item_id", "ts"] + (["session_id"] if session else [])
    df = pl.DataFrame([r for r in rows], schema=cols, orient="row")
    return schema.coerce(df, "events", "<test>")


@pytest.fixture(scope="session")
def tiny_synth_dir(tmp_path_factory) -> Path:
    """A tiny prepared synthetic dataset with impressions (150 users, 120 items, 4k events), read-only."""
    from recemb.data import synth
    from recemb.data.config import SynthConfig

    config = SynthConfig(users=150, items=120, events=4000, topics=6, impressions=300, images=False, seed=1)
    return synth.generate(config, tmp_path_factory.mktemp("tiny_synth") / "data")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (DESIGN.md §9), shut down at the end."""
    import ray

    from recemb.ray_runtime import ensure_ray

    started = ensure_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(autouse=True)
def ray_cpus_released(request):
    """Before a slow test, wait (up to 60 s) until the session Ray has its 2 CPUs free again.

    Actors of an earlier test (Ray Data pools, Serve replicas, Train workers) release their
    CPUs asynchronously; a multi-worker TorchTrainer started meanwhile waited 60 s for its
    worker group, and Ray Train 2.60 then hung the driver instead of raising (seen once in
    test_alignment_on_two_ray_workers_survives_a_worker_fault).
    """
    if request.node.get_closest_marker("slow") is not None and "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            # Actors of a failed Ray Data or Train run can sit in reference cycles (the exception a test
            # caught keeps them) and hold their CPUs until collected: without this, 60 s waits.
            gc.collect()
            deadline = time.monotonic() + 60
            while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
    yield
