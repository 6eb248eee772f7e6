"""The ``recemb tune`` driver: one Ray Tune experiment per model on the validation split.

For each model: its search space (:mod:`.space`), trials that fit on the
validation split's train part and report the selection metric after the
early-stopping rungs and their last epoch (:mod:`.trial`; ASHA, or for the
local and hybrid searchers :mod:`.stopping`'s rule), the configured setting as
the first trial (so the table shows what the search gained), the rest chosen
by the searcher (random draws, then steps from the best, :mod:`.local`;
random; or Optuna's TPE). With a time budget, each model's configured trial is timed
on its first epochs first, and the models are searched cheapest first, each
with a share of what is left that grows with the square root of its trial's
cost. Trials run in parallel on Ray
(``tune.cpus_per_trial`` each), a crashed trial is retried
(``tune.max_failures``), and a search that was interrupted resumes from Ray
Tune's experiment state when it is run again with the same settings.

Outputs under ``<run>/tune/``::

    trials.parquet    one row per trial: model, status, score, epochs, metrics, settings (JSON)
    history.parquet   one row per report: model, trial, epoch, score, seconds since the search began
    best.yaml         the best completed trial's settings per model, as a config overlay (the
                      configured setting where no trial beat it beyond noise: ``tune.min_gain``)
    summary.json      per model: default vs best validation score, trial counts, wall time
    ray/<model>/      Ray Tune's experiment state (restore)

Only completed trials (all their epochs) can win: a trial stopped early
was scored after fewer epochs than its settings say.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from recemb.config import PipelineConfig, build_config, config_to_dict, merge_tree
from recemb.errors import ConfigError, RecembError
from recemb.eval.evaluate import validation_inputs
from recemb.eval.validation import PROTOCOLS, SELECTION_METRICS
from recemb.io import atomic_path, write_json
from recemb.stages.registry import MODELS, ModelSpec, Variant, eval_entry, model_spec
from recemb.testing import faults
from recemb.tune.blend import fit_blend_weights, format_blend
from recemb.tune.config import TuneConfig
from recemb.tune.noise import standard_error
from recemb.tune.space import Space, contains, defaults, model_space, overlay_tree, query_grid, split_space, to_ray
from recemb.tune.trial import PROGRESS, SCORE, TrialSetup, check_metric, estimate_trial_seconds, run_trial, rungs

log = logging.getLogger("recemb.tune")
FINGERPRINT_FILE = "recemb_tune.json"
TRAILING_STATE_FILE = "recemb_trailing_best.json"  # recemb.tune.stopping's reference, kept across a restore


@dataclass(frozen=True)
class TuneRequest:
    """Command-line choices over the ``tune:`` section (None: the section's value)."""

    models: list[str] | None = None
    trials: int | None = None
    time_budget: str | None = None
    concurrent: int | None = None
    searcher: str | None = None
    resume: bool = True
    blend: bool = False  # also fit candidates.weights (recemb.tune.blend)
    blend_only: bool = False  # only that: no model search

    def apply(self, t: TuneConfig) -> TuneConfig:
        update = {
            "models": self.models,
            "trials": self.trials,
            "time_budget": self.time_budget,
            "concurrent": self.concurrent,
            "searcher": self.searcher,
        }
        try:
            return TuneConfig.model_validate({**t.model_dump(), **{k: v for k, v in update.items() if v is not None}})
        except Exception as e:  # pydantic's message names the bad option
            raise ConfigError(f"recemb tune: invalid option ({e})") from None


def tuned_models(cfg: PipelineConfig) -> list[ModelSpec]:
    """``tune.models``, or every base model of ``eval.models`` with a declared search space."""
    if cfg.tune.models:
        return [model_spec(name) for name in cfg.tune.models]
    out = []
    for name in cfg.eval.models:
        spec, _, variant_or_content = eval_entry(name)
        if name == spec.name and spec.search_space and not spec.content_only and spec not in out:
            out.append(spec)
    if not out:
        raise ConfigError(
            "tune: nothing to tune; set tune.models (or --models) to some of "
            f"{[s.name for s in MODELS.values() if s.search_space]}"
        )
    return out


def tune_protocol(cfg: PipelineConfig) -> str:
    """``tune.protocol``, or the first of ``eval.protocols`` that has a validation split."""
    if cfg.tune.protocol != "auto":
        return cfg.tune.protocol
    for p in cfg.eval.protocols:
        if p in PROTOCOLS:
            return p
    raise ConfigError(f"tune: eval.protocols {cfg.eval.protocols} has none of {PROTOCOLS}; set tune.protocol")


def _fingerprint(cfg: PipelineConfig, spec: ModelSpec, space: Space, protocol: str, metric: str) -> str:
    """What a resumable experiment must share with this run: base config, space, split, metric."""
    tree = config_to_dict(cfg)
    tree.pop("tune", None)
    t = cfg.tune
    payload: dict[str, Any] = {
        "config": tree,
        "model": spec.name,
        "space": space,
        "protocol": protocol,
        "metric": metric,
        "search": [
            t.trials,
            t.searcher,
            t.explore,
            t.stopping,
            t.grace,
            t.reduction_factor,
            t.stop_margin,
            t.seed,
            t.validation_fraction,
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _searcher(t: TuneConfig, space: Space, first: dict[str, Any], cost_s: float | None, budget_s: float | None):
    if t.searcher in ("local", "hybrid"):
        from recemb.tune.local import LocalSearch

        draws = int(t.explore * (t.trials - 1)) if t.searcher == "hybrid" else 0
        return LocalSearch(
            space,
            first,
            metric=SCORE,
            mode="max",
            trial_seconds=cost_s,
            budget_seconds=budget_s,
            random_draws=draws,
            explore_share=t.explore,
            seed=t.seed,
        )
    if t.searcher == "tpe":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError(
                "tune.searcher: tpe needs optuna; `pip install optuna`, or use searcher: hybrid"
            ) from None
        # TPE's categorical dimensions cannot hold a configured value outside their choices.
        points = [first] if contains(space, first) else None
        return OptunaSearch(points_to_evaluate=points, seed=t.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=[first], random_state=t.seed)


def _scheduler(t: TuneConfig, percents: list[int], experiment: Path) -> Any:
    """The early-stopping rule of ``tune.scheduler`` over the rungs ``percents`` (of a trial's epochs);
    ``experiment``: the Ray Tune experiment's folder, where a rule keeps what a restore must bring back."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if t.stopping == "asha":
        return ASHAScheduler(
            time_attr=PROGRESS, max_t=100, grace_period=percents[0], reduction_factor=t.reduction_factor
        )
    if t.stopping == "trailing":
        from recemb.tune.stopping import TrailingBest

        return TrailingBest(percents, t.stop_margin, metric=SCORE, state_file=experiment / TRAILING_STATE_FILE)
    return FIFOScheduler()


def model_setup(cfg: PipelineConfig, spec: ModelSpec, base: TrialSetup) -> tuple[TrialSetup, Space, Space, dict]:
    """``(trial setup, whole space, drawn space, configured setting)`` of one model's search."""
    t = cfg.tune
    full_space = model_space(spec, t.spaces.get(spec.name))
    space, inside = split_space(full_space)
    percents = rungs(t.grace, t.reduction_factor) if t.stopping != "fifo" else [100]
    setup = replace(base, report_percents=tuple(percents), query_grid=query_grid(inside))
    return setup, full_space, space, defaults(cfg, spec, space)


def trial_costs(setups: dict[str, tuple[TrialSetup, dict[str, Any]]], t: TuneConfig) -> dict[str, float]:
    """Seconds of each model's configured trial, timed on its first epochs, the models side by side on Ray."""
    import ray

    probe = ray.remote(estimate_trial_seconds).options(num_cpus=t.cpus_per_trial, num_gpus=t.gpus_per_trial)
    refs = {name: probe.remote(first, setup) for name, (setup, first) in setups.items()}
    return {name: max(1.0, float(ray.get(ref))) for name, ref in refs.items()}


def _tune_model(
    cfg: PipelineConfig,
    spec: ModelSpec,
    base: TrialSetup,
    budget_s: float | None,
    out: Path,
    resume: bool,
    started: float,
    cost_s: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run one model's experiment; return (trial rows, report rows)."""
    from ray import tune

    t = cfg.tune
    setup, full_space, space, first = model_setup(cfg, spec, base)
    protocol, metric = base.protocol, base.metric
    percents = list(setup.report_percents)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial}
    )
    storage = out / "ray"
    path = storage / spec.name
    tune_config = tune.TuneConfig(
        metric=SCORE,
        mode="max",
        num_samples=t.trials,
        scheduler=_scheduler(t, percents, path.resolve()),
        search_alg=_searcher(t, space, first, cost_s, budget_s),
        max_concurrent_trials=t.concurrent or None,
        time_budget_s=budget_s,
    )
    fp = _fingerprint(cfg, spec, full_space, protocol, metric)
    marker = path / FINGERPRINT_FILE
    same = marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp
    if resume and same and tune.Tuner.can_restore(str(path)):
        log.info("tune %s: resuming the interrupted search in %s", spec.name, path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        if path.exists():
            log.info("tune %s: starting afresh (%s)", spec.name, "settings changed" if not same else "not resumable")
            shutil.rmtree(path)
        run_config = tune.RunConfig(
            name=spec.name,
            storage_path=str(storage.resolve()),
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            verbose=0,
        )
        tuner = tune.Tuner(trainable, param_space=to_ray(space), tune_config=tune_config, run_config=run_config)
    path.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": fp})
    grid = tuner.fit()
    trials, reports = [], []
    for i in range(len(grid)):
        result = grid[i]
        last = result.metrics or {}
        params = {k: v for k, v in (result.config or {}).items() if k in space}
        default = params == first
        params |= {
            k: last[k.removeprefix("eval.")] for k in full_space if k not in space and k.removeprefix("eval.") in last
        }
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path or "?").name)
        history = result.metrics_dataframe
        if result.error:
            status = "error"
        elif SCORE not in last:
            status = "not run"  # the time budget ended first
        else:
            status = "completed" if last.get("epoch") == last.get("epochs") else "stopped"
        if history is not None and len(history) and SCORE in history:
            for _, row in history.iterrows():
                reports.append(
                    {
                        "model": spec.name,
                        "trial": trial_id,
                        "epoch": int(row["epoch"]),
                        "score": float(row[SCORE]),
                        "at_s": float(row["wall"]) - started,
                    }
                )
        trials.append(
            {
                "model": spec.name,
                "trial": trial_id,
                "status": status,
                "default": default,
                "score": float(last.get(SCORE, math.nan)),
                "configured_score": float(last.get("configured_score", math.nan)),
                "epoch": int(last.get("epoch", 0) or 0),
                "epochs": int(last.get("epochs", 0) or 0),
                "seconds": float(last.get("time_total_s", 0.0) or 0.0),
                "fit_rows": int(last.get("fit_rows", 0) or 0),
                "scored_rows": int(last.get("scored_rows", 0) or 0),
                "params": json.dumps(overlay_tree(spec, params), sort_keys=True),
                "error": str(result.error)[:500] if result.error else None,
                "metrics": json.dumps({k: v for k, v in last.items() if "@" in k or k in ("auc", "mrr")}),
            }
        )
    return trials, reports


def best_trials(trials: pl.DataFrame, min_gain: float = 0.0) -> dict[str, dict[str, Any]]:
    """Per model: the completed trial with the highest score (absent where no trial completed).

    The configured setting's trial is kept unless the best beats it by more than ``min_gain``
    standard errors of its score (recemb.tune.noise): a search picks its best among many
    noisy scores, and a winner by less than noise is as likely a worse setting (ML-100K
    two-tower: one setting's validation Recall@20 spans 0.249-0.272 over 3 training seeds).
    The row chosen that way carries ``kept: True`` and the best's ``top_score``.
    """
    out: dict[str, dict[str, Any]] = {}
    for model in trials["model"].unique(maintain_order=True).to_list():
        done = trials.filter((pl.col("model") == model) & (pl.col("status") == "completed"))
        done = done.filter(pl.col("score").is_finite())
        if not done.height:
            continue
        best = done.sort(["score", "default"], descending=True).row(0, named=True)
        configured = done.filter(pl.col("default"))
        if not best["default"] and configured.height:
            row = configured.row(0, named=True)
            scores = (best["score"], row["score"])
            noise = min_gain * standard_error(row["score"], row["scored_rows"])
            if best["score"] - row["score"] <= noise:
                log.info("tune %s: the best %.4f is within noise of the configured %.4f: kept", model, *scores)
                best = {**row, "kept": True, "top_score": best["score"]}
        out[model] = best
    return out


def write_best(path: Path, best: dict[str, dict[str, Any]], protocol: str, metric: str) -> dict[str, Any]:
    """``best.yaml``: the overlay of every model's best settings, with a header saying where it came from."""
    tree: dict[str, Any] = {}
    for row in best.values():
        tree = merge_tree(tree, json.loads(row["params"]))
    header = [
        "# recemb tune: the best completed trial of each model, selected on the validation split",
        f"# ({protocol} {metric}; the test part was never read). Apply with",
        "#   recemb pipeline CONFIG --overlay " + str(path),
    ]
    header += [
        f"#   {model}: validation {metric} {row['score']:.4f}"
        + (f" (configured, kept: the best trial's {row['top_score']:.4f} is within noise)" if row.get("kept") else "")
        for model, row in best.items()
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(header) + "\n" + (yaml.safe_dump(tree, sort_keys=True) if tree else "{}\n"))
    return tree


def summarise(trials: pl.DataFrame, best: dict[str, dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    """Per model: trial counts, the configured setting's and the best validation score, wall time."""
    out: dict[str, Any] = {}
    for model in trials["model"].unique(maintain_order=True).to_list():
        mine = trials.filter(pl.col("model") == model)
        default = mine.filter(pl.col("default") & (pl.col("status") == "completed"))
        counts = {s: int((mine["status"] == s).sum()) for s in ("completed", "stopped", "error", "not run")}
        row = best.get(model)
        out[model] = {
            "trials": mine.height,
            **counts,
            # the configured setting scored as configured (its own query pooling)
            "default_score": float(default["configured_score"][0]) if default.height else None,
            "best_score": float(row["score"]) if row else None,
            "best_settings": json.loads(row["params"]) if row else None,
            # the configured setting was kept: no trial beat it beyond noise (tune.min_gain); top_score: the best's
            "kept_configured": bool(row and row.get("kept")),
            **({"top_score": float(row["top_score"])} if row and row.get("kept") else {}),
            "seconds": round(seconds.get(model, 0.0), 1),
        }
    return out


def format_summary(summary: dict[str, Any], protocol: str, metric: str) -> str:
    """The table printed at the end of a search."""
    head = (
        f"{'model':<12} {'trials':>6} {'done':>5} {'stopped':>7} {'failed':>6} {'default':>8} {'best':>8} {'wall':>7}"
    )
    lines = [f"validation {protocol} {metric} (default = the configured setting)", head, "-" * len(head)]
    for model, s in summary.items():

        def cell(v: float | None) -> str:
            return f"{v:8.4f}" if v is not None else f"{'-':>8}"

        lines.append(
            f"{model:<12} {s['trials']:>6} {s['completed']:>5} {s['stopped']:>7} {s['error']:>6} "
            f"{cell(s['default_score'])} {cell(s['best_score'])} {s['seconds']:>6.0f}s"
        )
    for model, s in summary.items():
        if s.get("kept_configured"):
            lines.append(
                f"{model}: the configured setting kept (the best trial's {s['top_score']:.4f} is within noise)"
            )
        if s["best_settings"]:
            lines.append(f"{model}: {json.dumps(s['best_settings'], sort_keys=True)}")
    return "\n".join(lines)


def tune_run(cfg: PipelineConfig, request: TuneRequest = TuneRequest()) -> dict[str, Any]:
    """Search every tuned model's settings on the validation split; write ``<run>/tune/``; return the summary."""
    from recemb.data.dataset import load_dataset
    from recemb.data.paths import data_dir
    from recemb.ray_runtime import ray_session
    from recemb.stages.evaluate import _cache_dir

    cfg = cfg.model_copy(update={"tune": request.apply(cfg.tune)})
    t = cfg.tune
    specs = [] if request.blend_only else tuned_models(cfg)
    request = replace(request, blend=request.blend or request.blend_only)
    for spec in specs:
        model_space(spec, t.spaces.get(spec.name))  # a bad space fails before any data is read
    unknown = set(t.spaces) - {s.name for s in MODELS.values()}
    if unknown:
        raise ConfigError(f"tune.spaces: unknown model(s) {sorted(unknown)}; registered: {list(MODELS)}")
    protocol = tune_protocol(cfg)
    metric = t.metric or SELECTION_METRICS[protocol]
    check_metric(protocol, metric)
    if not (cfg.prepared_dir / "events.parquet").is_file():
        from recemb.stages import STAGES

        STAGES["data"].run(cfg, False)
    ds = load_dataset(cfg.prepared_dir)
    split, catalogue = validation_inputs(ds, protocol, cfg.eval, t.validation_fraction, cfg.data.sessionize.gap_minutes)
    out = cfg.run_dir / "tune"
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, int(t.cpus_per_trial))
    started = time.time()
    all_trials: list[dict[str, Any]] = []
    all_reports: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    # What a trial's process needs that it would otherwise resolve against its own directory.
    trial_env = {**faults.env(), "RECEMB_DATA_DIR": str(data_dir().resolve())}
    with ray_session() if specs else contextlib.nullcontext():  # a blend-only fit needs no Ray
        bases: dict[str, TrialSetup] = {}
        probes: dict[str, tuple[TrialSetup, dict[str, Any]]] = {}  # the configured trial of each model
        for spec in specs:
            # Absolute paths: Ray Tune runs each trial in its own working directory.
            cache_dir = _cache_dir(cfg, spec.section_config(cfg)).resolve()
            root = Path(ds.root).resolve() if ds.root else None
            side = {"items": ds.items, "users": ds.users, "root": root, "cache_dir": cache_dir}
            # Frozen content features are computed once here, not by every trial.
            spec.build(cfg, Variant()).prepare_side(ds.items, root, cache_dir)
            base = TrialSetup(cfg, spec.name, protocol, metric, split, catalogue, side, threads=threads, env=trial_env)
            setup, _, _, first = model_setup(cfg, spec, base)
            bases[spec.name], probes[spec.name] = base, (setup, first)
        costs: dict[str, float] = {}
        if t.budget_seconds:
            costs = trial_costs(probes, t)
            print("== configured trials take ~" + ", ".join(f"{n} {c:.0f}s" for n, c in costs.items()), flush=True)
            # Cheapest first: what a model leaves of its share goes to the costlier ones after it.
            specs = sorted(specs, key=lambda spec: costs[spec.name])
        for i, spec in enumerate(specs):
            # What is left of the budget, shared by the models still to search in proportion to the square
            # root of their trials' cost: between equal time (an expensive model gets few trials) and equal
            # trials (ML-100K: a sequence trial costs ~3-5x the others, which would then get ~2 minutes).
            budget = None
            if t.budget_seconds:
                left = t.budget_seconds - (time.time() - started)
                budget = left * math.sqrt(costs[spec.name]) / sum(math.sqrt(costs[s.name]) for s in specs[i:])
                if budget <= 0:
                    log.warning("tune %s: the time budget is spent; not searched", spec.name)
                    continue
            print(f"== tune {spec.name}: up to {t.trials} trials on validation {protocol} {metric}", flush=True)
            t0 = time.perf_counter()
            trials, reports = _tune_model(
                cfg, spec, bases[spec.name], budget, out, request.resume, started, costs.get(spec.name)
            )
            seconds[spec.name] = time.perf_counter() - t0
            all_trials += trials
            all_reports += reports
    if not specs and request.blend:
        return _blend_only(cfg, ds, protocol, split, catalogue, out)
    if not all_trials:
        raise RecembError("tune: no trial ran (is the time budget too small?)")
    trials_df = pl.DataFrame(all_trials)
    trials_df.write_parquet(out / "trials.parquet")
    pl.DataFrame(
        all_reports,
        schema={"model": pl.String, "trial": pl.String, "epoch": pl.Int64, "score": pl.Float64, "at_s": pl.Float64},
    ).write_parquet(out / "history.parquet")
    best = best_trials(trials_df, t.min_gain)
    tree = write_best(out / "best.yaml", best, protocol, metric)
    models = summarise(trials_df, best, seconds)
    blend = _fit_blend(cfg, tree, ds, protocol, split, catalogue, out) if request.blend else None
    summary = {
        "protocol": protocol,
        "metric": metric,
        "validation_fraction": t.validation_fraction,
        "searcher": t.searcher,
        "scheduler": t.stopping,
        "models": models,
        **({"blend": blend} if blend else {}),
    }
    write_json(out / "summary.json", summary)
    print(format_summary(models, protocol, metric))
    if blend:
        print(format_blend(blend))
    print(f"wrote {out / 'best.yaml'} (apply: recemb pipeline CONFIG --overlay {out / 'best.yaml'})")
    return summary


def _fit_blend(
    cfg: PipelineConfig, tree: dict[str, Any], ds: Any, protocol: str, split: Any, catalogue: Any, out: Path
) -> dict[str, Any]:
    """Fit ``candidates.weights`` with the sources at their best settings (``tree``); add them to best.yaml."""
    tuned = build_config(merge_tree(config_to_dict(cfg), tree))
    result = fit_blend_weights(tuned, ds, protocol, split, catalogue)
    path = out / "best.yaml"
    text = path.read_text() if path.is_file() else ""
    header = [line for line in text.splitlines() if line.startswith("#")] or [
        "# recemb tune: settings selected on the validation split (the test part was never read). Apply with",
        f"#   recemb pipeline CONFIG --overlay {path}",
    ]
    header.append(
        f"#   blend: validation {result['metric']} {result['score']:.4f} (equal weights {result['equal_score']:.4f})"
    )
    merged = merge_tree(tree, {"candidates": {"weights": result["weights"]}})
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(header) + "\n" + yaml.safe_dump(merged, sort_keys=True))
    write_json(out / "blend.json", result)
    return {k: v for k, v in result.items() if k != "table"}


def _blend_only(cfg: PipelineConfig, ds: Any, protocol: str, split: Any, catalogue: Any, out: Path) -> dict[str, Any]:
    """``--blend`` with no model to search: fit the weights over the configured (or best.yaml's) settings."""
    path = out / "best.yaml"
    tree = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    tree.pop("candidates", None)
    blend = _fit_blend(cfg, tree, ds, protocol, split, catalogue, out)
    print(format_blend(blend))
    print(f"wrote {path} (apply: recemb pipeline CONFIG --overlay {path})")
    return {"protocol": protocol, "blend": blend}
