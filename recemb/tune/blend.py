"""Blend weights fitted on the validation split: ``recemb tune CONFIG --blend``.

Production's candidate lists fuse several sources by weighted reciprocal rank
(:mod:`recemb.retrieval.blend`). Which weights are best depends on the data
(a sequence model may lead on one log, co-visitation on another), so they are
fitted like any setting, on the validation split only:

1. every source of the blend (``candidates.sources``, default ``covisit`` and
   the evaluated models; models with the settings of ``best.yaml`` when a
   search wrote one) is fitted once on the validation split's fit events;
2. coordinate ascent from the best of equal weights and each source alone
   (so the fit never ends below the best single source): each source's weight in turn takes
   the value of :data:`GRID` (times the others' scale) that maximises the
   validation ``recall@K`` of the blended list (K = the largest ``eval.k``:
   a candidate list is judged by what it holds); two rounds, ties keep the
   current weight;
3. the weights go into ``<run>/tune/best.yaml`` as ``candidates.weights``
   (merged with the models' settings), which the candidate job, the service
   and the evaluation's ``candidates[...]`` row read.

Each source's ranked lists are computed once (:class:`BlendScorer` with
``cache``), so a weight setting costs one blending pass over the queries.
"""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.errors import ConfigError
from recemb.eval.protocols import run_protocol

GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
ROUNDS = 2


def fit_blend_weights(cfg: PipelineConfig, ds: Any, protocol: str, split: Any, catalogue: Any) -> dict[str, Any]:
    """Fit ``candidates.weights`` on the validation ``split``; returns ``{"weights", "table", "metric", ...}``.

    ``table`` lists every evaluated setting ``{"weights": {...}, "score": float}`` in order.
    """
    from recemb.eval.blend_scorer import BlendScorer
    from recemb.stages.evaluate import BLEND_PROTOCOLS, model_scorers, with_candidates_row

    if protocol not in BLEND_PROTOCOLS:
        raise ConfigError(f"tune --blend: blends are fitted on {BLEND_PROTOCOLS}, not {protocol!r}; set tune.protocol")
    k = max(cfg.eval.k)
    metric = f"recall@{k}"
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"candidates": True})})
    scorers = with_candidates_row(cfg, protocol, model_scorers(cfg, protocol, ds))
    blend = next((s for s in scorers.values() if isinstance(s, BlendScorer)), None)
    if blend is None or len(blend.sources) < 2:
        raise ConfigError(
            "tune --blend: the blend needs two or more sources on this protocol "
            f"(candidates.sources = {cfg.candidates.sources or 'default'}, eval.models = {cfg.eval.models})"
        )
    names = list(blend.sources)
    blend.cache = True
    masking = {"exclude_seen": cfg.candidates.exclude_seen} if protocol == "ml" else {}
    table: list[dict[str, Any]] = []

    def score(weights: dict[str, float]) -> float:
        blend.weights = dict(weights)
        res = run_protocol(protocol, split, blend, catalogue, [k], batch_size=cfg.eval.batch_size, **masking)
        table.append({"weights": dict(weights), "score": float(res[metric])})
        return float(res[metric])

    weights = dict.fromkeys(names, 1.0)
    best = score(weights)
    singles = {}
    for name in names:  # each source alone: what the blend must beat, and a start as good as any
        singles[name] = score({n: float(n == name) for n in names})
        if singles[name] > best + 1e-9:
            best, weights = singles[name], {n: float(n == name) for n in names}
    for _ in range(ROUNDS):
        changed = False
        for name in names:
            for value in GRID:
                trial = {**weights, name: value}
                if trial == weights or not any(trial.values()):
                    continue
                s = score(trial)
                if s > best + 1e-9:
                    best, weights, changed = s, trial, True
        if not changed:
            break
    return {
        "weights": weights,
        "score": best,
        "equal_score": table[0]["score"],
        "singles": singles,
        "metric": metric,
        "protocol": protocol,
        "tried": len(table),
        "table": table,
    }


def format_blend(result: dict[str, Any]) -> str:
    """The lines printed after a blend fit."""
    m = result["metric"]
    lines = [f"blend weights on validation {result['protocol']} {m} ({result['tried']} settings tried)"]
    for name, s in result["singles"].items():
        lines.append(f"  {name:<14} alone      {s:.4f}")
    lines.append(f"  {'equal weights':<25} {result['equal_score']:.4f}")
    lines.append(f"  {'fitted':<25} {result['score']:.4f}  {result['weights']}")
    return "\n".join(lines)
