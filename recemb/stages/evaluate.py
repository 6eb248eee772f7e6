"""The ``evaluate`` stage: baselines, registered models and EmbeddingSets on the config's protocols.

Models come from the registry (recemb.stages.registry): every ``eval.models``
entry is a registered model or one of its variants, fitted by the protocol
runner on each split's train part through the model contract
(recemb.eval.model_scorer). Content-only models and variants run on
``eval.content_protocols`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from recemb.config import PipelineConfig, config_to_dict
from recemb.data.dataset import Dataset
from recemb.eval.scorers import Scorer
from recemb.index.stage import COVISIT
from recemb.stages.base import Stage
from recemb.stages.registry import MODELS, ModelSpec, Variant, eval_entry


def check_eval_models(cfg: PipelineConfig) -> None:
    """Raise a clear ConfigError for an ``eval.models`` entry that is not registered."""
    for name in cfg.eval.models:
        eval_entry(name)


def _cache_dir(cfg: PipelineConfig, section: Any) -> Path:
    """Where a model's frozen content features are cached: its content parts' ``cache_dir`` or ``<run>/cache``."""
    from recemb.models.content.config import ContentParts

    parts = getattr(section, "content", section)
    return cfg.content_cache_dir(parts if isinstance(parts, ContentParts) else None)


def model_scorers(cfg: PipelineConfig, protocol: str, ds: Dataset) -> dict[str, Scorer]:
    """The scorers of ``cfg.eval.models`` that run on ``protocol``, in config order.

    Sequences are sessions under sess and whole user histories elsewhere.
    """
    from recemb.eval.model_scorer import ModelScorer

    e = cfg.eval
    unit: Literal["session", "user"] = "session" if protocol == "sess" else "user"
    out: dict[str, Scorer] = {}
    for name in e.models:
        spec, variant, content_only = eval_entry(name)
        if content_only and protocol not in e.content_protocols:
            continue
        if spec.warm_only and not content_only and protocol in e.content_protocols:
            continue  # the id-only model itself; its content variants (content_only) do run there

        def build(spec: ModelSpec = spec, variant: Variant = variant):
            return spec.build(cfg, variant)

        side = {
            "items": ds.items,
            "users": ds.users,
            "root": ds.root,
            "cache_dir": _cache_dir(cfg, spec.section_config(cfg, variant)),
        }
        out[name] = ModelScorer(build, name, unit, query=e.query, last_n=e.query_last_n, scoring=e.scoring, side=side)
    return out


BLEND_PROTOCOLS = ("ml", "sess")  # where a candidate list is what is scored (not shown items, not cold ones)


def with_candidates_row(cfg: PipelineConfig, protocol: str, scorers: dict[str, Scorer]) -> dict[str, Scorer]:
    """``scorers`` plus, with ``eval.candidates`` on ml/sess, production's blend as a last row.

    Its sources are ``candidates.sources`` (default: ``covisit`` when ``export.covisit`` is
    enabled, then the models of ``scorers``), in that order; a model source reuses its own
    row's fit (SharedFit), ``covisit`` is built from the split's train part with
    ``export.covisit``'s settings and gets a row of its own. Sources that do not run on this
    protocol (content-only models) are left out of the blend and out of its name.
    """
    from recemb.eval.blend_scorer import BlendScorer, CoVisitScorer, SharedFit

    if not cfg.eval.candidates or protocol not in BLEND_PROTOCOLS:
        return scorers
    co = cfg.export.covisit
    names = cfg.candidates.sources or ([COVISIT] if co.enabled else []) + list(scorers)
    out = dict(scorers)
    if COVISIT in names and COVISIT not in out:
        out[COVISIT] = CoVisitScorer(co.unit, co.top_m, co.query, name=COVISIT)
    used = [n for n in names if n in out]
    if not used:
        return out
    shared = {n: SharedFit(out[n]) for n in used}
    out.update(shared)
    c = cfg.candidates
    quotas = {n: q for n, q in (c.quotas or {}).items() if n in shared} or None
    weights = None if c.weights is None else {n: c.weights.get(n, 0.0) for n in shared}
    blend = BlendScorer(shared, max(cfg.eval.k), quotas, c.exclude_seen, weights=weights)
    return out | {blend.name: blend}


def embedding_scorers(cfg: PipelineConfig) -> dict[str, Scorer]:
    """An :class:`EmbeddingScorer` per ``cfg.eval.embeddings`` entry (name -> directory).

    A relative directory is looked up from the working directory first, then
    under the run directory (so ``item2vec/embeddings`` works in a config).
    With ``eval.run_embeddings`` the run's own trained sets join them, named
    by model (``item2vec``, ``two_tower``).
    """
    from recemb.embeddings import EmbeddingSet, find_embedding_sets
    from recemb.eval.embedding_scorer import EmbeddingScorer

    e = cfg.eval
    out: dict[str, Scorer] = {}
    sets: dict[str, Any] = dict(find_embedding_sets(cfg.run_dir)) if e.run_embeddings else {}
    sets.update(e.embeddings)
    for name, where in sets.items():
        path = Path(where)
        if not path.is_absolute() and not path.exists() and (cfg.run_dir / path).exists():
            path = cfg.run_dir / path
        es = EmbeddingSet.load(path)
        out[name] = EmbeddingScorer(es, query=e.query, last_n=e.query_last_n, scoring=e.scoring, name=name)
    return out


def evaluate_run(cfg: PipelineConfig) -> dict[str, Any]:
    """Evaluate everything ``cfg.eval`` names on the prepared data; write ``<run>/eval/``; return the results."""
    from recemb.data.dataset import load_dataset
    from recemb.eval.candidates_eval import evaluate_candidates
    from recemb.eval.evaluate import evaluate

    check_eval_models(cfg)
    ds = load_dataset(cfg.prepared_dir)
    on_disk = embedding_scorers(cfg)  # load (and verify) artifacts before any long run
    gap = cfg.data.sessionize.gap_minutes
    return evaluate(
        ds,
        cfg.eval,
        cfg.run_dir / "eval",
        scorers_for=lambda protocol: with_candidates_row(
            cfg, protocol, {**model_scorers(cfg, protocol, ds), **on_disk}
        ),
        gap_minutes=gap,
        record=config_to_dict(cfg),
        candidates=evaluate_candidates(cfg.run_dir / "candidates", ds.events, cfg.eval.k, gap),
    )


def run_evaluate(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    from recemb.eval.tables import format_tables

    print(format_tables(evaluate_run(cfg)))
    print(f"wrote {cfg.run_dir / 'eval' / 'metrics.json'}")
    return {"metrics": str(cfg.run_dir / "eval" / "metrics.json")}


STAGE = Stage(
    "evaluate",
    run_evaluate,
    ("eval", *dict.fromkeys(s for spec in MODELS.values() for s in (spec.section, *spec.reads) if s != "ray")),
    "baselines and models on every protocol the data supports",
)
