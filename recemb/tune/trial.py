"""One tuning trial: a model with the trial's settings, fitted on the validation split's train part,
scored on its validation queries after the epochs the scheduler looks at, each score reported to Ray Tune.

The split handed to a trial is built by the driver (recemb.eval.validation)
and holds no test rows; every report carries how many rows the trial fitted
on and scored (``fit_rows``, ``scored_rows``), so a test can check that.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from recemb.config import PipelineConfig
from recemb.data.vocab import Vocab
from recemb.errors import ConfigError
from recemb.eval.protocols import run_protocol
from recemb.eval.scorers import Prefitted
from recemb.eval.validation import fit_events, metric_cutoffs, scored_events
from recemb.stages.registry import Variant, model_spec
from recemb.tune.space import apply_params

SCORE = "score"  # the key every report carries the selection metric under (Ray Tune's ``metric``)
_METRICS = {
    "ml": r"(recall|ndcg|mrr|hit_rate)@\d+",
    "sess": r"(recall|ndcg|mrr)@\d+",
    "imp": r"auc|mrr|(ndcg|ctr)@\d+",
}


def check_metric(protocol: str, metric: str) -> None:
    """A clear error for a selection metric the protocol runner does not produce."""
    if not re.fullmatch(_METRICS[protocol], metric):
        raise ConfigError(f"tune.metric: {metric!r} is not a {protocol} metric; expected one like {_METRICS[protocol]}")


PROGRESS = "progress"  # ASHA's time attribute: percent of the trial's own epochs done (0..100)


def rungs(grace: float, reduction_factor: int) -> list[int]:
    """ASHA's rungs in percent of a trial's epochs: ``grace * rf**k`` up to ``1 / rf``, then 100.

    No rung past ``1 / rf``: stopping a trial at 90% of its epochs saves little and wastes
    what it already cost (measured: ML-100K two-tower trials stopped at 27 of 30 epochs).
    """
    out, share = [], grace
    while share <= 1 / reduction_factor + 1e-9:
        out.append(max(1, round(100 * share)))
        share *= reduction_factor
    return [*out, 100]


def report_epochs(percents: tuple[int, ...], epochs: int) -> set[int]:
    """The epochs at which a trial of ``epochs`` reports: the first at or past each rung, and the last."""
    return {min(epochs, max(1, math.ceil(p * epochs / 100))) for p in percents} | {epochs}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one model shares (handed over once through Ray's object store).

    Attributes:
        config: the base pipeline config; a trial's settings are applied over it.
        model: the registry name.
        protocol, metric: what a trial is scored on and selected by.
        split, catalogue: the validation split (no test rows) and its item space.
        side: side inputs of ``fit`` (items, users, root, cache_dir).
        report_percents: shares of its epochs (percent) after which a trial reports (ASHA's rungs);
            it always reports after its last epoch.
        threads: compute threads of a trial.
        query_grid: query-pooling settings (``eval.query`` ...) every report scores, keeping the
            best (recemb.tune.space.query_grid); ``({},)``: the configured ones only.
        env: environment variables a trial sets first (``RECEMB_FAULTS`` of fault-injection tests:
            an already running Ray does not pass on variables set after it started).
    """

    config: PipelineConfig
    model: str
    protocol: str
    metric: str
    split: Any
    catalogue: Vocab
    side: dict[str, Any] = field(default_factory=dict)
    report_percents: tuple[int, ...] = ()
    threads: int = 1
    query_grid: tuple[dict[str, Any], ...] = ({},)
    env: dict[str, str] = field(default_factory=dict)


def trial_config(setup: TrialSetup, params: dict[str, Any]) -> PipelineConfig:
    """The base config with the trial's settings and the trial's thread count."""
    spec = model_spec(setup.model)
    section = spec.section_config(setup.config)
    extra = {"threads": setup.threads} if "threads" in type(section).model_fields else {}
    return apply_params(setup.config, spec, {**params, **extra})


def _scorer(setup: TrialSetup, cfg: PipelineConfig) -> Any:
    """A fresh ModelScorer of the trial's model, as the evaluation builds it."""
    from recemb.eval.model_scorer import ModelScorer

    spec = model_spec(setup.model)
    e = cfg.eval
    return ModelScorer(
        lambda: spec.build(cfg, Variant()),
        spec.name,
        "session" if setup.protocol == "sess" else "user",
        query=e.query,
        last_n=e.query_last_n,
        scoring=e.scoring,
        side=setup.side,
    )


def _evaluate(setup: TrialSetup, cfg: PipelineConfig, scorer: Any, query: dict[str, Any]) -> tuple[float, dict]:
    """Score the model as trained so far on the validation queries with ``query``'s pooling over the configured.

    Returns ``(selection metric, -inf where not finite; every metric)``.
    """
    e = cfg.eval
    settings = {"eval.query": e.query, "eval.query_last_n": e.query_last_n, **query}
    scorer.set_query(settings["eval.query"], settings["eval.query_last_n"])
    masking = {"exclude_seen": e.exclude_seen} if setup.protocol == "ml" else {}
    ks = metric_cutoffs(setup.metric, list(e.imp_k if setup.protocol == "imp" else e.k))
    res = run_protocol(
        setup.protocol,
        setup.split,
        Prefitted(scorer),
        setup.catalogue,
        ks,
        batch_size=e.batch_size,
        seed=e.seed,
        **masking,
    )
    if setup.metric not in res:
        raise ConfigError(f"tune.metric: {setup.metric!r} is not among {sorted(res)}")
    value = float(res[setup.metric])
    return (value if math.isfinite(value) else float("-inf")), res


def run_trial(params: dict[str, Any], setup: TrialSetup, report: Any = None) -> dict[str, Any]:
    """Fit and score one setting; ``report(metrics)`` after the epochs of ``setup.report_percents``.

    ``report`` defaults to ``ray.tune.report`` (inside a Tune trial). Returns the last report.
    """
    import torch

    if report is None:
        from ray import tune

        report = tune.report
    os.environ.update(setup.env)
    torch.set_num_threads(setup.threads)
    spec = model_spec(setup.model)
    cfg = trial_config(setup, params)
    epochs = int(getattr(spec.section_config(cfg), "epochs", 1))
    report_at = report_epochs(setup.report_percents, epochs)
    train = fit_events(setup.protocol, setup.split)
    rows = {"fit_rows": train.height, "scored_rows": scored_events(setup.protocol, setup.split).height}
    scorer = _scorer(setup, cfg)
    started = time.perf_counter()
    last: dict[str, Any] = {}

    def score(epoch: int) -> None:
        nonlocal last
        own, res = _evaluate(setup, cfg, scorer, {})
        best, chosen = own, {}
        if scorer.pools_queries:  # the model pools its item vectors: try every pooling, keep the best
            for query in setup.query_grid:
                value, other = _evaluate(setup, cfg, scorer, query)
                if value > best:
                    best, chosen, res = value, query, other
        metrics = {k: float(v) for k, v in res.items() if isinstance(v, (int, float)) and not k.endswith("_s")}
        last = {
            **metrics,
            SCORE: best,
            "configured_score": own,  # with the configured query pooling
            **{key.removeprefix("eval."): value for key, value in chosen.items()},
            "epoch": epoch,
            "epochs": epochs,
            PROGRESS: round(100 * epoch / epochs),
            "trial_s": time.perf_counter() - started,
            "wall": time.time(),
            **rows,
        }
        report(last)

    def on_epoch(epoch: int) -> None:
        if epoch in report_at:
            score(epoch)

    scorer.fit(train, setup.catalogue, on_epoch=on_epoch)
    if last.get("epoch") != epochs:  # a model that calls the hook less often than its epochs say
        score(epochs)
    return last


class _Timed(Exception):
    """Raised from the epoch hook once the epochs a cost estimate needs are timed."""


def estimate_trial_seconds(params: dict[str, Any], setup: TrialSetup) -> float:
    """Seconds a whole trial of ``params`` takes, timed on its first two epochs (the rest is not run).

    ``setup-to-first-epoch + (epochs - 1) * second epoch + reports * one scoring``: a model's
    trials differ from its configured one mostly in how many epochs they run, so the configured
    trial's cost says how many trials a share of the time budget buys (recemb.tune.search).
    """
    import torch

    os.environ.update(setup.env)
    torch.set_num_threads(setup.threads)
    cfg = trial_config(setup, params)
    epochs = int(getattr(model_spec(setup.model).section_config(cfg), "epochs", 1))
    scorer = _scorer(setup, cfg)
    marks: list[float] = []
    started = time.perf_counter()

    def on_epoch(epoch: int) -> None:
        marks.append(time.perf_counter() - started)
        if len(marks) >= min(2, epochs):
            raise _Timed

    try:
        scorer.fit(fit_events(setup.protocol, setup.split), setup.catalogue, on_epoch=on_epoch)
    except _Timed:
        pass
    if not marks:  # the model does not call the hook: it was a whole fit
        marks.append(time.perf_counter() - started)
    per_epoch = marks[1] - marks[0] if len(marks) > 1 else marks[0]
    t0 = time.perf_counter()
    for query in setup.query_grid if scorer.pools_queries else ({},):
        _evaluate(setup, cfg, scorer, query)
    scoring = time.perf_counter() - t0
    reports = len(report_epochs(setup.report_percents, epochs))
    return marks[0] + max(0, epochs - 1) * per_epoch + reports * scoring
