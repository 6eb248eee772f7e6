"""The ``export`` stage: every EmbeddingSet of the run -> a checked Annoy index; events -> co-visitation."""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.stages.base import Stage


def run_export(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    from recemb.index.stage import export_run

    manifests = export_run(cfg.run_dir, cfg.export, cfg.prepared_dir / "events.parquet")
    for name, m in manifests.items():
        if m["kind"] == "covisit":
            print(
                f"exported {name}: {m['count']} items, top {m['top_m']} neighbours by {m['unit']}, "
                f"{m['pairs']} pairs in {m['build_seconds']}s -> {cfg.run_dir / 'index' / name}"
            )
            continue
        if m["kind"] == "exact":
            from recemb.index.exact_export import describe

            print(
                f"exported {name}: {m['count']} items, dim {m['dim']}, {describe(m)} -> {cfg.run_dir / 'index' / name}"
            )
            continue
        recall = "n/a" if m.get("recall_at_10") is None else f"{m['recall_at_10']:.3f}"
        c = m.get("certified")
        certified = (
            f", held-out recall@10 {c['recall']:.3f} at {c['search_k_factor']:g} x n_trees x k"
            f"{'' if c['met'] else ' (BELOW the target ' + str(c['target']) + ', accepted)'}"
            if c
            else ""
        )
        print(
            f"exported {name}: {m['count']} items, dim {m['dim']}, {m['metric']}, "
            f"{m['n_trees']} trees, recall@10 vs exact {recall}{certified} -> {cfg.run_dir / 'index' / name}"
        )
    return {"indexes": {name: str(cfg.run_dir / "index" / name) for name in manifests}}


STAGE = Stage(
    "export",
    run_export,
    ("export", "data"),
    "export the run's EmbeddingSets to Annoy indexes and the co-visitation table",
)
