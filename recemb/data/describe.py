"""``recemb data describe``: the statistics of a prepared dataset that decide how to model it.

:func:`describe` reads only the columns it needs (lazily, so it works on
datasets larger than memory allows for a full ``load_dataset``) and returns a
JSON-ready dict; :func:`format_description` renders it for the terminal.

The dict (``None`` where the dataset lacks the table or column)::

    name, path
    counts           users, items, events, event_items, sessions (as Dataset.counts()),
                     plus impressions, impression_rows, clicks when there are impressions,
                     and users_table when users.parquet exists
    time_range       start, end (ISO 8601), days
    events_per_type  {event: count}, most frequent first
    session_length   min, p50, p90, p99, max, mean   (events per non-null session_id)
    events_per_user  min, p50, p90, p99, max, mean
    item_popularity  top1pct_share, top10pct_share (share of events on the most
                     frequent 1% / 10% of catalogue items), gini (over the catalogue,
                     items without events included), items_with_1_event, items_without_events
    repeats          repeat_share (recemb.data.repeats), exclude_seen_auto: whether
                     ``exclude_seen: auto`` drops seen items from candidates and P-ML
    impressions      ctr (clicked rows / rows), clicks_per_impression, share_with_click,
                     ctr_by_position {position: ctr} for the first 10 positions
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recemb.data.dataset import META_FILE
from recemb.data.repeats import KEEP_SEEN_FROM, repeat_share
from recemb.errors import DataValidationError

QUANTILES = (("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))


def _dist(values: np.ndarray) -> dict[str, float] | None:
    """min/p50/p90/p99/max/mean of a 1-D array (``None`` when empty)."""
    if len(values) == 0:
        return None
    qs = np.quantile(values, [q for _, q in QUANTILES], method="linear")
    out = {name: float(q) for (name, _), q in zip(QUANTILES, qs)}
    out["mean"] = float(values.mean())
    return out


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative ``counts`` [N] (0 = all equal, -> 1 = one item has everything)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    # G = sum_i (2i - n - 1) x_(i) / (n * sum x), i = 1..n over ascending x.
    return float(((2 * np.arange(1, n + 1) - n - 1) * x).sum() / (n * total))


def _popularity(item_counts: np.ndarray) -> dict[str, float | int]:
    """Concentration of events over the catalogue; ``item_counts`` [N] includes zeros."""
    desc = np.sort(item_counts)[::-1]
    total = max(int(desc.sum()), 1)
    n = len(desc)

    def top(share: float) -> float:
        return float(desc[: max(1, math.ceil(share * n))].sum() / total)

    return {
        "top1pct_share": top(0.01),
        "top10pct_share": top(0.10),
        "gini": gini(desc),
        "items_with_1_event": int((item_counts == 1).sum()),
        "items_without_events": int((item_counts == 0).sum()),
    }


def _impressions(path: Path) -> tuple[dict[str, int], dict[str, Any]]:
    imp = pl.scan_parquet(path).select("impression_id", "position", "clicked")
    per = imp.group_by("impression_id").agg(pl.col("clicked").sum().alias("c")).collect()
    rows = imp.select(pl.len().alias("n"), pl.col("clicked").sum().alias("c")).collect().row(0, named=True)
    by_pos = (
        imp.filter(pl.col("position") < 10)
        .group_by("position")
        .agg(pl.col("clicked").mean().alias("ctr"))
        .sort("position")
        .collect()
    )
    counts = {
        "impressions": per.height,
        "impression_rows": int(rows["n"]),
        "clicks": int(rows["c"] or 0),
    }
    stats = {
        "ctr": counts["clicks"] / counts["impression_rows"] if counts["impression_rows"] else None,
        "clicks_per_impression": per["c"].sum() / per.height if per.height else None,
        "share_with_click": (per["c"] > 0).sum() / per.height if per.height else None,
        "ctr_by_position": {int(p): float(c) for p, c in by_pos.iter_rows()},
    }
    return counts, stats


def describe(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Statistics of the prepared dataset in ``dataset_dir`` (layout of module docstring).

    Raises:
        DataValidationError: when ``dataset_dir`` has no ``events.parquet``.
    """
    root = Path(dataset_dir)
    ev_path = root / "events.parquet"
    if not ev_path.exists():
        raise DataValidationError(
            f"{root}: no events.parquet here; this is not a prepared dataset. "
            f"Create one with `recemb data prepare` or `recemb data synth --out {root}`"
        )
    meta = json.loads((root / META_FILE).read_text()) if (root / META_FILE).exists() else {}
    ev = pl.scan_parquet(ev_path)

    per_item = ev.group_by("item_id").agg(pl.len().alias("n")).collect()
    per_user = ev.group_by("user_id").agg(pl.len().alias("n")).collect()
    per_session = ev.drop_nulls("session_id").group_by("session_id").agg(pl.len().alias("n")).collect()
    summary = (
        ev.select(
            pl.len().alias("events"),
            pl.col("ts").min().alias("start"),
            pl.col("ts").max().alias("end"),
        )
        .collect()
        .row(0, named=True)
    )
    types = ev.group_by("event").agg(pl.len().alias("n")).sort(["n", "event"], descending=[True, False]).collect()

    item_counts = per_item["n"].to_numpy().astype(np.int64)
    items_path = root / "items.parquet"
    n_items = per_item.height
    if items_path.exists():
        catalogue = pl.scan_parquet(items_path).select("item_id").collect()
        n_items = catalogue.height
        # Catalogue items without events count as zeros in the popularity distribution.
        known = per_item.join(catalogue, on="item_id", how="semi")
        item_counts = np.concatenate(
            [
                known["n"].to_numpy().astype(np.int64),
                np.zeros(n_items - known.height, dtype=np.int64),
            ]
        )

    counts: dict[str, int] = {
        "users": per_user.height,
        "items": n_items,
        "events": int(summary["events"]),
        "event_items": per_item.height,
        "sessions": per_session.height,
    }
    if (root / "users.parquet").exists():
        counts["users_table"] = pl.scan_parquet(root / "users.parquet").select(pl.len()).collect().item()
    imp_stats = None
    if (root / "impressions.parquet").exists():
        imp_counts, imp_stats = _impressions(root / "impressions.parquet")
        counts |= imp_counts

    start, end = summary["start"], summary["end"]
    share = repeat_share(ev)
    return {
        "name": meta.get("name", root.name),
        "path": str(root),
        "counts": counts,
        "time_range": None
        if start is None
        else {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "days": (end - start).total_seconds() / 86_400,
        },
        "events_per_type": {e: int(n) for e, n in types.iter_rows()},
        "session_length": _dist(per_session["n"].to_numpy()),
        "events_per_user": _dist(per_user["n"].to_numpy()),
        "item_popularity": _popularity(item_counts),
        "repeats": {"repeat_share": share, "exclude_seen_auto": share < KEEP_SEEN_FROM},
        "impressions": imp_stats,
    }


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:.4g}"
    return str(v)


def format_description(d: dict[str, Any]) -> str:
    """Render :func:`describe`'s dict as an aligned text block, one section per heading."""
    lines = [f"dataset {d['name']}  ({d['path']})", ""]

    def section(title: str, rows: dict[str, Any] | None) -> None:
        lines.append(title)
        if not rows:
            lines.append("  (none)")
        else:
            width = max(len(str(k)) for k in rows)
            for k, v in rows.items():
                lines.append(f"  {k!s:<{width}}  {_num(v):>14}")
        lines.append("")

    section("counts", d["counts"])
    tr = d["time_range"]
    lines += [
        "time range",
        f"  {tr['start']}  ->  {tr['end']}  ({tr['days']:.1f} days)" if tr else "  -",
        "",
    ]
    section("events per type", d["events_per_type"])
    for title, key in (
        ("session length (events)", "session_length"),
        ("events per user", "events_per_user"),
    ):
        dist = d[key]
        lines.append(title)
        if dist is None:
            lines.append("  (no session ids; sessionize first)" if key == "session_length" else "  (none)")
        else:
            lines.append("  " + "  ".join(f"{k}={_num(v)}" for k, v in dist.items()))
        lines.append("")
    section("item popularity", d["item_popularity"])
    section("repeats (share of events on an item the user had before)", d["repeats"])
    imp = d["impressions"]
    if imp is not None:
        by_pos = imp["ctr_by_position"]
        section("impressions", {k: v for k, v in imp.items() if k != "ctr_by_position"})
        lines[-1:] = [
            "  ctr by position  " + " ".join(f"{p}:{c:.3f}" for p, c in by_pos.items()),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"
