"""Shared fixtures: tiny canonical tables and the real-data folder."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

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
def ray_local():
    """One local Ray for the whole test session (DESIGN.md §9), shut down at the end."""
    import ray

    from recemb.ray_runtime import ensure_ray

    started = ensure_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()
