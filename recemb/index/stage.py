"""The export stage: every EmbeddingSet of a run -> ``<run>/index/<model>/``, events -> ``<run>/index/covisit/``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from recemb.embeddings import MANIFEST_FILE as EMB_MANIFEST
from recemb.embeddings import find_embedding_sets
from recemb.errors import ConfigError
from recemb.index.base import RecallBelowTarget
from recemb.index.config import HNSW_FROM, CoVisitConfig, ExportConfig
from recemb.index.exact_export import export_exact
from recemb.index.export import export_index, slower_than_exact
from recemb.index.hnsw_export import export_hnsw
from recemb.io import read_json_object

log = logging.getLogger(__name__)
COVISIT = "covisit"  # <run>/index/covisit/: the co-visitation source
#: ``auto`` swaps an approximate index for exact search when exact answers this many times faster
#: (a closer timing could flip the choice from run to run).
EXACT_MARGIN = 2.0


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
    out = {m: _export_one(found[m], run_dir / "index" / m, e) for m in wanted}
    if e.covisit.enabled and events_path is not None:
        out[COVISIT] = export_covisit(events_path, run_dir / "index" / COVISIT, e.covisit)
    return out


def resolve_backend(backend: str, embset_dir: Path) -> str:
    """``export.backend`` for one EmbeddingSet: ``auto`` = annoy below :data:`HNSW_FROM` items, else hnsw."""
    if backend != "auto":
        return backend
    count = read_json_object(embset_dir / EMB_MANIFEST, ConfigError, "retrain the model").get("count", 0)
    return "hnsw" if isinstance(count, int) and count >= HNSW_FROM else "annoy"


def _export_one(embset_dir: Path, out_dir: Path, e: ExportConfig) -> dict[str, Any]:
    """Export one EmbeddingSet with the configured backend. ``auto`` picks by size and never ships
    an approximate index that misses ``recall_target`` or answers :data:`EXACT_MARGIN` times slower
    than exact search at its certified recall (vectors an index cannot partition, e.g. an
    under-trained model's, make it search nearly everything): it exports exact search then."""
    backend = resolve_backend(e.backend, embset_dir)
    try:
        manifest = _export_with(backend, embset_dir, out_dir, e)
    except RecallBelowTarget as err:
        if e.backend != "auto":
            raise
        why = f"cannot reach the recall target ({err})"
        replaced: dict[str, Any] = {"certified": err.certified, "reason": "recall below export.recall_target"}
    else:
        faster = slower_than_exact(manifest, EXACT_MARGIN)
        if faster is None:
            return manifest
        if e.backend != "auto":
            log.warning(
                "%s: exact search would answer %.1fx faster than this %s index at its certified recall; "
                "consider export.backend: exact (or auto)",
                out_dir.name,
                faster,
                backend,
            )
            return manifest
        why = f"answers {faster:.1f}x slower than exact search at its certified recall"
        replaced = {"certified": manifest.get("certified"), "exact_faster": faster}
    log.warning("%s: %s %s; exporting exact search instead", out_dir.name, backend, why)
    return {**_export_with("exact", embset_dir, out_dir, e), "replaced": {"kind": backend, **replaced}}


def _export_with(backend: str, embset_dir: Path, out_dir: Path, e: ExportConfig) -> dict[str, Any]:
    target, accept = e.recall_target, e.accept_lower_recall
    if backend == "exact":
        return export_exact(
            embset_dir, out_dir, e.metric, e.codec, e.rerank, recall_target=target, accept_lower_recall=accept
        )
    if backend == "hnsw":
        return export_hnsw(
            embset_dir,
            out_dir,
            e.metric,
            e.hnsw.m,
            e.hnsw.ef_construction,
            recall_target=target,
            accept_lower_recall=accept,
        )
    return export_index(
        embset_dir,
        out_dir,
        n_trees=e.n_trees,
        metric=e.metric,
        search_k=e.search_k,
        sample=e.sample,
        recall_target=target,
        accept_lower_recall=accept,
    )


def export_covisit(events_path: str | Path, out_dir: str | Path, c: CoVisitConfig) -> dict[str, Any]:
    """Build the co-visitation table of the events in ``events_path`` into ``out_dir``; returns its manifest."""
    from recemb.data import schema
    from recemb.retrieval.covisit import CoVisitTable

    events = schema.read_table(Path(events_path), "events")
    return CoVisitTable.build(events, unit=c.unit, top=c.top_m, query=c.query).save(out_dir)
