"""How long do N synthetic events take through prepare + sessionize + split?

Generates the synthetic dataset (recemb.data.synth), then times each step of
the data layer on its events, and the same sessionize + leave-last-out done
with pandas (the usual peer) on the same frame in the same run.

    .venv/bin/python benchmarks/data_pipeline.py --events 10000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from recemb.data import schema, synth
from recemb.data.config import SynthConfig
from recemb.data.sessions import sessionize
from recemb.data.splits import leave_last_out, session_split
from recemb.data.vocab import Vocab


def timed(rows: list, step: str, fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    rows.append((step, time.perf_counter() - t0))
    return out


def pandas_sessionize_llo(events: pl.DataFrame, gap_minutes: float) -> tuple[int, int]:
    pdf = events.select("user_id", "item_id", "ts").to_pandas()
    pdf = pdf.sort_values(["user_id", "ts", "item_id"], kind="stable")
    gap = pdf.groupby("user_id")["ts"].diff() > __import__("pandas").Timedelta(minutes=gap_minutes)
    pdf["session"] = gap.astype("int64").groupby(pdf["user_id"]).cumsum()
    from_end = pdf.groupby("user_id").cumcount(ascending=False)
    return int((from_end == 0).sum()), int(pdf["session"].max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--skip-pandas", action="store_true")
    args = ap.parse_args()

    cfg = SynthConfig(users=args.users, items=args.items, events=args.events, impressions=0, images=False)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synth"
        timed(rows, "generate (synth -> parquet)", synth.generate, cfg, out)
        events = timed(rows, "read + validate events", schema.read_table, out / "events.parquet", "events")
        n = events.height
        # Drop the generator's session ids so that the gap-based path is what is measured.
        bare = events.with_columns(session_id=pl.lit(None, dtype=pl.String))
        sess = timed(rows, "sessionize (30 min gap)", sessionize, bare, 30.0)
        timed(rows, "vocab (items)", Vocab.from_ids, sess["item_id"])
        timed(rows, "split P-ML leave-last-out", leave_last_out, sess)
        timed(rows, "split P-SESS (time)", session_split, sess, 0.1)
        recemb_total = sum(s for name, s in rows if not name.startswith("generate"))
        peer = None
        if not args.skip_pandas:
            t0 = time.perf_counter()
            pandas_sessionize_llo(bare, 30.0)
            peer = time.perf_counter() - t0

    print(f"\n{n:,} events, {args.users:,} users, {args.items:,} items")
    print(f"{'step':<32}{'seconds':>10}{'events/s':>14}")
    for name, s in rows:
        print(f"{name:<32}{s:>10.2f}{n / s:>14,.0f}")
    print(f"{'recemb prepare+sessionize+split':<32}{recemb_total:>10.2f}{n / recemb_total:>14,.0f}")
    if peer is not None:
        rec = next(s for name, s in rows if name.startswith("sessionize")) + next(
            s for name, s in rows if name.startswith("split P-ML")
        )
        print(f"{'pandas sessionize + LLO (peer)':<32}{peer:>10.2f}{n / peer:>14,.0f}")
        print(f"recemb sessionize + LLO: {rec:.2f}s -> {peer / rec:.1f}x faster than pandas")


if __name__ == "__main__":
    main()
