"""How each stage's cost grows with events and items: wall time, peak memory, throughput (issue 17).

    .venv/bin/python benchmarks/scale.py --quick               # 2 sizes, ~7 min on 2 cores
    .venv/bin/python benchmarks/scale.py --events 1000000 5000000 --items 10000 100000
    .venv/bin/python benchmarks/scale.py --events 2000000 --items 1000000 \
        --stages data two_tower "two_tower plain" export        # fused vs plain at 1M items
    .venv/bin/python benchmarks/scale.py --events 5000000 50000000 --stages data sequence \
        --set sequence.steps_per_epoch=3000                     # the same steps at every size

For every (events, items) size, a synthetic dataset (streamed to Parquet in
1M-event chunks) goes through the real stages, each one a fresh ``recemb
pipeline --set stages=[...]`` process, the way a user runs them:

==========  ==================================================================
data        generate + prepare (canonical Parquet, sessions, splits)
item2vec    1 epoch (numba kernel, in-process: ``ray.workers: 0``, the default)
two_tower   1 epoch in-process, torchrec fused path (EmbeddingBagCollection + fused
            RowWiseAdagrad under DMP), and ``two_tower plain`` the same model
            as ``nn.EmbeddingBag`` + Adam (``two_tower.backend: torch``)
sequence    1 epoch in-process (windows prepared in a child process, full softmax up to
            20k items, sampled above)
export      the index of each model (``export.backend: auto``: Annoy below
            100k items, HNSW from there) + the co-visitation table
candidates  top-100 for every user (Ray Data, 1 worker)
evaluate    P-ML Recall/NDCG@20 of both models and popularity
==========  ==================================================================

Per stage: wall seconds; peak RSS of the stage's whole process tree (its
Ray workers included: every process below the stage's, sampled from /proc
every 0.1 s), of its largest single process and, for the two-tower, of the
training process alone (its ``metrics.json`` ``peak_rss_mb``: the examples
are prepared in a child process, the trainer reads them in blocks); throughput where the stage
reports one (events/s, samples/s). Then per stage the fitted log-log slope
of seconds against events (1 = linear) and a PNG of the curves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECEMB = [sys.executable, "-m", "recemb.cli"]
STAGES = ("data", "item2vec", "two_tower", "two_tower plain", "sequence", "export", "candidates", "evaluate")
PAGE = os.sysconf("SC_PAGE_SIZE")


def config(events: int, items: int, run_dir: Path, name: str) -> dict:
    """A pipeline config for one size: every model one epoch, P-ML only."""
    return {
        "run": {"name": name, "dir": str(run_dir)},
        "data": {
            "source": "synth",
            "synth": {
                "users": max(1000, events // 50),
                "items": items,
                "events": events,
                "topics": max(20, items // 500),
                "impressions": 0,
                "images": False,
            },
        },
        "item2vec": {"dim": 64, "epochs": 1},
        "two_tower": {"epochs": 1},
        "sequence": {"epochs": 1},
        "export": {"covisit": {"enabled": True}},
        "candidates": {"k": 100, "sources": ["item2vec", "two_tower"], "num_workers": 1, "holdout": "ml"},
        "eval": {"protocols": ["ml"], "k": [20], "baselines": ["popularity"], "models": ["item2vec", "two_tower"]},
        "stages": ["data"],
    }


class TreeRss:
    """Peak RSS of a process and all its descendants, sampled from /proc."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every = pid, every
        self.peak_tree = self.peak_one = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _tree_rss(self.pid)
            if rss:
                self.peak_tree = max(self.peak_tree, sum(rss))
                self.peak_one = max(self.peak_one, max(rss))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _tree_rss(root: int) -> list[int]:
    """RSS bytes of ``root`` and every descendant (by parent pid), from /proc."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    out = []
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as f:
                out.append(int(f.read().split()[1]) * PAGE)
        except (OSError, IndexError, ValueError):
            continue
    return out


def run_stage(cfg_path: Path, stage: str, extra: list[str], log: Path) -> dict:
    """One stage in a fresh process: ``{seconds, peak_tree_mb, peak_one_mb}``; raises on failure."""
    cmd = [*RECEMB, "pipeline", str(cfg_path), "--set", f"stages=[{stage}]", *extra]
    t0 = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        rss = TreeRss(proc.pid)
        code = proc.wait()
        rss.stop()
    seconds = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"{stage} failed (exit {code}); see {log}")
    return {"seconds": seconds, "peak_tree_mb": rss.peak_tree / 2**20, "peak_one_mb": rss.peak_one / 2**20}


def _metrics(run: Path, stage: str) -> dict:
    """What a training stage wrote to its ``metrics.json`` ({} for the others, or when absent)."""
    if stage in ("item2vec", "sequence"):
        path = run / stage
    elif stage.startswith("two_tower"):
        path = run.parent / f"{run.name}-plain" / "two_tower" if stage == "two_tower plain" else run / "two_tower"
    else:
        return {}
    try:
        return json.loads((path / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def throughput(metrics: dict) -> str:
    """The stage's own throughput figure, from its last epoch."""
    epochs = metrics.get("epochs") or [{}]
    if "events_per_s" in epochs[-1]:
        return f"{epochs[-1]['events_per_s']:,.0f} events/s"
    if "samples_per_s" in epochs[-1]:
        return f"{epochs[-1]['samples_per_s']:,.0f} samples/s"
    if "targets_per_s" in epochs[-1]:
        return f"{epochs[-1]['targets_per_s']:,.0f} targets/s"
    return ""


def bench_size(
    events: int, items: int, root: Path, log: Path, stages: list[str], workers: int = 0, sets: list[str] | None = None
) -> list[dict]:
    name = f"scale-{events}-{items}"
    cfg_path = root / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config(events, items, root, name)))
    run = root / name
    rows = []
    for stage in stages:
        extra = [arg for kv in sets or [] for arg in ("--set", kv)]
        if stage == "two_tower plain":  # the same data, its own run directory
            extra += ["--set", f"run.name={name}-plain", "--set", f"data.prepared={run / 'data'}"]
            extra += ["--set", "two_tower.backend=torch"]
        if workers and stage.split()[0] in ("item2vec", "two_tower", "sequence"):  # Ray Train workers (0: here)
            extra += ["--set", f"ray.workers={workers}"]
        r = run_stage(cfg_path, stage.split()[0], extra, log)
        metrics = _metrics(run, stage)
        # The training process alone (rank 0): the two-tower and the sequence model prepare their
        # inputs in a child process.
        trainer = metrics.get("peak_rss_mb") or (metrics.get("epochs") or [{}])[-1].get("peak_rss_mb")
        rows.append(
            {
                "events": events,
                "items": items,
                "stage": stage,
                **r,
                "throughput": throughput(metrics),
                "trainer_mb": trainer,
            }
        )
        print(
            f"  {events:>11,} events {items:>9,} items  {stage:<16} {r['seconds']:8.1f} s  "
            f"peak {r['peak_tree_mb']:7.0f} MB tree / {r['peak_one_mb']:6.0f} MB one"
            f"{f' / {trainer:.0f} MB trainer' if trainer else ''}  {rows[-1]['throughput']}",
            flush=True,
        )
    return rows


def slopes(rows: list[dict]) -> dict[str, float]:
    """Per stage, the least-squares slope of log(seconds) on log(events), over sizes with one item count."""
    out = {}
    for stage in STAGES:
        pts = [(r["events"], r["seconds"]) for r in rows if r["stage"] == stage]
        if len({e for e, _ in pts}) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out[stage] = float(np.polyfit(x, y, 1)[0])
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for stage in STAGES:
        pts = sorted((r["events"], r["seconds"], r["peak_tree_mb"]) for r in rows if r["stage"] == stage)
        if pts:
            ax1.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=stage)
            ax2.loglog([p[0] for p in pts], [p[2] for p in pts], "o-", label=stage)
    ax1.set(xlabel="events", ylabel="seconds", title="wall time per stage")
    ax2.set(xlabel="events", ylabel="MB", title="peak RSS of the stage's process tree")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000, 50_000_000])
    ap.add_argument("--items", type=int, nargs="+", default=[10_000])
    ap.add_argument(
        "--quick", action="store_true", help="250k and 1M events x 10k items, the sequence model at 300 steps an epoch"
    )
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="a subset, in order (data first)")
    ap.add_argument(
        "--ray-workers",
        type=int,
        default=0,
        help="Ray Train workers for item2vec, the two-tower and the sequence model",
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every stage, e.g. sequence.steps_per_epoch=2000 (repeatable)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scale", help="tables, plot and the stages' log")
    ap.add_argument("--keep", action="store_true", help="keep the runs (under --out) instead of a temp dir")
    args = ap.parse_args()
    if args.quick:
        args.events, args.items = [250_000, 1_000_000], [10_000]
        # a full sequence epoch at 1M events is ~2.3 min, a third of the whole quick run
        args.sets = ["sequence.steps_per_epoch=300", *args.sets]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "stages.log"
    log.write_text("")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="recemb-scale-") as tmp:
        root = args.out / "runs" if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for items in args.items:
            for events in args.events:
                try:
                    rows += bench_size(events, items, root, log, args.stages, args.ray_workers, args.sets)
                except RuntimeError as e:
                    print(f"  {events:,} events x {items:,} items: {e}", flush=True)
                    break  # bigger sizes of this item count will not fit either
    (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
    print(
        "\n| events | items | stage | seconds | peak MB (tree) | peak MB (largest process) "
        "| peak MB (training process) | throughput |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        trainer = f"{r['trainer_mb']:.0f}" if r.get("trainer_mb") else ""
        print(
            f"| {r['events']:,} | {r['items']:,} | {r['stage']} | {r['seconds']:.1f} | {r['peak_tree_mb']:.0f} | "
            f"{r['peak_one_mb']:.0f} | {trainer} | {r['throughput']} |"
        )
    for items in args.items:
        fitted = slopes([r for r in rows if r["items"] == items])
        if fitted:
            print(f"\nlog-log slope of seconds vs events at {items:,} items (1.0 = linear):")
            print("  " + ", ".join(f"{s} {v:.2f}" for s, v in fitted.items()))
    if rows:
        plot(rows, args.out / "scale.png")
        print(f"\n{args.out / 'scale.png'}, {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()
