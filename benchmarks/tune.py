"""Does `recemb tune` pay? Test metrics of the configured vs the tuned settings, beside the baselines.

For each dataset: ``recemb tune`` searches on the validation split (the test
part is never read), then every tuned model is fitted twice on the test
split's train part by the evaluation harness (``run_rows``, what ``recemb
evaluate`` runs): once with the config's settings, once with ``best.yaml``
merged over them; with ``--seeds``, twice per training seed, reported as the
mean over seeds. The baselines run on the same split. Printed per dataset:
test metrics (default -> tuned), the validation scores the search saw, the
trial counts and the wall time of the search.

Run::

    .venv/bin/python benchmarks/tune.py                                   # ml-100k, yoochoose, synthetic
    .venv/bin/python benchmarks/tune.py --only ml-100k --trials 30 --time-budget 15m
    .venv/bin/python benchmarks/tune.py --only synthetic --models item2vec --searcher tpe
    .venv/bin/python benchmarks/tune.py --only ml-100k --reuse --seeds 0 1 2   # last search, 3 training seeds
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

from recemb.config import PipelineConfig, build_config, config_to_dict, merge_tree
from recemb.data.dataset import load_dataset
from recemb.eval.evaluate import baseline_scorers, protocol_inputs, run_rows
from recemb.stages import STAGES
from recemb.stages.evaluate import model_scorers
from recemb.stages.registry import MODELS
from recemb.tune.search import TuneRequest, tune_protocol, tune_run

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {  # name -> (config, baselines)
    "ml-100k": ("ml-100k.yaml", ["popularity", "knn", "knn-recency"]),
    "yoochoose": ("yoochoose.yaml", ["popularity", "knn-last", "knn-recency"]),
    "synthetic": ("quickstart.yaml", ["popularity", "knn", "knn-recency"]),
}
COLUMNS = {"ml": ["recall@20", "ndcg@10"], "sess": ["recall@20", "mrr@20"], "imp": ["auc", "ndcg@10"]}


def test_rows(cfg: PipelineConfig, protocol: str, baselines: list[str], models: list[str]) -> dict[str, dict]:
    """Fit the baselines and ``models`` (with ``cfg``'s settings) on the test split; rows by name."""
    ds = load_dataset(cfg.prepared_dir)
    split, catalogue = protocol_inputs(ds, protocol, cfg.eval, cfg.data.sessionize.gap_minutes)
    only = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"models": models})})
    scorers = {**baseline_scorers(baselines, protocol, cfg.eval.seed), **model_scorers(only, protocol, ds)}
    ks = sorted({*cfg.eval.k, 10, 20}) if protocol != "imp" else list(cfg.eval.imp_k)
    return {
        r["model"]: r for r in run_rows(protocol, split, catalogue, scorers, ks, cfg.eval.batch_size, cfg.eval.seed)
    }


def seeded(cfg: PipelineConfig, models: list[str], seed: int) -> PipelineConfig:
    """``cfg`` with every one of ``models`` trained from ``seed``."""
    tree = config_to_dict(cfg)
    for m in models:
        tree.setdefault(MODELS[m].section, {})["seed"] = seed
    return build_config(tree)


def seed_rows(cfg: PipelineConfig, protocol: str, models: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    """Test rows of ``models`` trained from each of ``seeds``: name -> one row per seed."""
    out: dict[str, list[dict]] = {m: [] for m in models}
    for seed in seeds:
        for m, row in test_rows(seeded(cfg, models, seed), protocol, [], models).items():
            out[m].append(row)
    return out


def cell(rows: list[dict], column: str) -> str:
    """The mean of ``column`` over seeds, with the range where there are several."""
    values = [r[column] for r in rows]
    mean = sum(values) / len(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} [{min(values):.4f}-{max(values):.4f}]"


def bench(
    name: str, request: TuneRequest, overrides: list[str], library_defaults: bool, seeds: list[int], reuse: bool
) -> dict:
    config, baselines = DATASETS[name]
    tree = yaml.safe_load((ROOT / "configs" / config).read_text())
    if library_defaults:  # no hand-set model settings: the search starts from the library's defaults
        for spec in MODELS.values():
            section = tree.get(spec.section, {})
            tree[spec.section] = {k: v for k, v in section.items() if k == "content"}
    cfg = build_config(tree, [f"run.name=bench-tune-{name}{'-lib' if library_defaults else ''}", *overrides])
    protocol = tune_protocol(cfg)
    if not (cfg.prepared_dir / "events.parquet").is_file():
        STAGES["data"].run(cfg, False)
    t0 = time.perf_counter()
    if reuse:  # the search of an earlier run of this benchmark: its summary and best.yaml
        earlier = cfg.run_dir / "tune" / "summary.json"
        if not earlier.is_file():
            raise SystemExit(f"--reuse: no earlier search in {earlier.parent}; run once without --reuse")
        summary = json.loads(earlier.read_text())
    else:
        summary = tune_run(cfg, request)
    search_s = time.perf_counter() - t0
    models = [m for m, s in summary["models"].items() if s["best_settings"]]
    overlay = yaml.safe_load((cfg.run_dir / "tune" / "best.yaml").read_text()) or {}
    tuned_cfg = build_config(merge_tree(config_to_dict(cfg), overlay))
    base = test_rows(cfg, protocol, baselines, [])
    before = seed_rows(cfg, protocol, models, seeds)
    # A model whose settings the search kept (recemb.tune.search.best_trials) is not fitted again.
    old_tree, new_tree = config_to_dict(cfg), config_to_dict(tuned_cfg)
    changed = [
        m
        for m in models
        if old_tree["eval"] != new_tree["eval"] or old_tree[MODELS[m].section] != new_tree[MODELS[m].section]
    ]
    after = {**before, **seed_rows(tuned_cfg, protocol, changed, seeds)}
    columns = COLUMNS[protocol]
    metric = summary["metric"]
    searched = "reused" if reuse else f"{search_s:.0f}s"
    print(f"\n{name} · P-{protocol.upper()} test split · search {searched} ({summary.get('searcher')})")
    if len(seeds) > 1:
        print(f"models: mean [min-max] over training seeds {seeds}")
    print(f"| model | {' | '.join(f'{c} default -> tuned' for c in columns)} | val {metric} default -> best | trials |")
    print(f"|---|{'---|' * len(columns)}---|---|")
    for b in baselines:
        print(f"| {b} | {' | '.join(f'{base[b][c]:.4f}' for c in columns)} | | |")
    for m in models:
        s = summary["models"][m]
        cells = " | ".join(f"{cell(before[m], c)} -> {cell(after[m], c)}" for c in columns)
        val = f"{s['default_score'] or float('nan'):.4f} -> {s['best_score']:.4f}"
        counts = f"{s['trials']} ({s['completed']} done, {s['stopped']} stopped)"
        print(f"| {m} | {cells} | {val} | {counts} |")
    print(f"best settings: {json.dumps(overlay, sort_keys=True)}")
    return {
        "dataset": name,
        "search_s": search_s,
        "summary": summary,
        "baselines": base,
        "before": before,
        "after": after,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--time-budget", default="15m")
    ap.add_argument("--searcher", choices=["hybrid", "local", "random", "tpe"], default=None)
    ap.add_argument(
        "--library-defaults",
        action="store_true",
        help="drop the configs' hand-set model settings (content parts kept): tune from the library defaults",
    )
    ap.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="train the models from each seed on the test split, default and tuned alike, and report the mean "
        "[min-max]: one seed's figure moves with the training noise (ML-100K two-tower: 0.215-0.234 Recall@20)",
    )
    ap.add_argument("--reuse", action="store_true", help="skip the search: test the best.yaml of an earlier run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="write every result here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    request = TuneRequest(
        models=args.models, trials=args.trials, time_budget=args.time_budget, searcher=args.searcher, resume=False
    )
    results = [
        bench(name, request, args.overrides, args.library_defaults, args.seeds, args.reuse) for name in args.only
    ]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
