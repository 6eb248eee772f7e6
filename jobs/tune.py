"""Hyper-parameter search as a Ray job (recemb.tune).

    python -m jobs.tune --config configs/ml-100k.yaml [--models item2vec two_tower] [--trials 30]
        [--time-budget 15m] [--workers 2] [--searcher hybrid|local|random|tpe] [--fresh] [--blend | --blend-only]
    ray job submit --working-dir . -- python -m jobs.tune --config configs/yoochoose.yaml

Trials run as Ray Tune trials on the cluster the job joins (fractional CPUs,
``tune.gpus_per_trial`` where there are GPUs), each scored on the validation
split only. Writes ``<run>/tune/`` (trials.parquet, history.parquet,
best.yaml, summary.json; with ``--blend`` also the candidate blend's weights,
fitted on the same validation split, in best.yaml and blend.json); a rerun with the same settings resumes an
interrupted search. Apply the result with ``--overlay <run>/tune/best.yaml``.
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import run_job


def main(argv: list[str] | None = None) -> int:
    from recemb.tune.search import TuneRequest, tune_run

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--models", nargs="+")
    ap.add_argument("--trials", type=int)
    ap.add_argument("--time-budget")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--searcher", choices=["hybrid", "local", "random", "tpe"])
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--blend", action="store_true")
    ap.add_argument("--blend-only", action="store_true")
    known, rest = ap.parse_known_args(argv)
    request = TuneRequest(
        models=known.models,
        trials=known.trials,
        time_budget=known.time_budget,
        concurrent=known.workers,
        searcher=known.searcher,
        resume=not known.fresh,
        blend=known.blend,
        blend_only=known.blend_only,
    )
    return run_job(
        "Search model settings on the validation split with Ray Tune", lambda cfg: tune_run(cfg, request), rest
    )


if __name__ == "__main__":
    sys.exit(main())
