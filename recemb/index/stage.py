"""The export stage: every EmbeddingSet of a run -> ``<run>/index/<model>/``, events -> ``<run>/index/covisit/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recemb.embeddings import find_embedding_sets
from recemb.errors import ConfigError
from recemb.index.config import CoVisitConfig, ExportConfig
from recemb.index.exact_export import export_exact
from recemb.index.export import export_all
from recemb.index.hnsw_export import export_hnsw

COVISIT = "covisit"  # <run>/index/covisit/: the co-visitation source


def export_run(
    run_dir: str | Path, section: ExportConfig | None = None, events_path: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """Export the EmbeddingSets of ``run_dir`` (``section.models``, or all) and, with
    ``section.covisit.enabled`` and ``events_path``, the co-visitation table to
    ``<run>/index/covisit/``; returns ``{name: manifest}``."""
    run_dir, e = Path(run_dir), section or ExportConfig()
    found = find_embedding_sets(run_dir)
    wanted = e.models or list(found)
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ConfigError(
            f"export.models: no EmbeddingSet for {missing} under {run_dir} "
            f"(found {sorted(found) or 'none'}); train those models first"
        )
    if not wanted:
        raise ConfigError(
            f"export: {run_dir} holds no EmbeddingSet (<run>/<model>/embeddings); "
            f"train a model first, e.g. `recemb train item2vec CONFIG`"
        )
    if COVISIT in wanted and e.covisit.enabled and events_path is not None:
        raise ConfigError(f"{run_dir}: a model named {COVISIT!r} would share the co-visitation index's directory")
    if e.backend == "exact":
        out = {
            m: export_exact(
                found[m],
                run_dir / "index" / m,
                metric=e.metric,
                codec=e.codec,
                rerank=e.rerank,
                recall_target=e.recall_target,
                accept_lower_recall=e.accept_lower_recall,
            )
            for m in wanted
        }
    elif e.backend == "hnsw":
        out = {
            m: export_hnsw(
                found[m],
                run_dir / "index" / m,
                metric=e.metric,
                m=e.hnsw.m,
                ef_construction=e.hnsw.ef_construction,
                recall_target=e.recall_target,
                accept_lower_recall=e.accept_lower_recall,
            )
            for m in wanted
        }
    else:
        out = export_all(
            {m: found[m] for m in wanted},
            run_dir,
            n_trees=e.n_trees,
            metric=e.metric,
            search_k=e.search_k,
            sample=e.sample,
            recall_target=e.recall_target,
            accept_lower_recall=e.accept_lower_recall,
        )
    if e.covisit.enabled and events_path is not None:
        out[COVISIT] = export_covisit(events_path, run_dir / "index" / COVISIT, e.covisit)
    return out


def export_covisit(events_path: str | Path, out_dir: str | Path, c: CoVisitConfig) -> dict[str, Any]:
    """Build the co-visitation table of the events in ``events_path`` into ``out_dir``; returns its manifest."""
    from recemb.data import schema
    from recemb.retrieval.covisit import CoVisitTable

    events = schema.read_table(Path(events_path), "events")
    return CoVisitTable.build(events, unit=c.unit, top=c.top_m, query=c.query).save(out_dir)
