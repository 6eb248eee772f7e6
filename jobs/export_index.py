"""Export the run's EmbeddingSets to indexes as a Ray job (DESIGN.md §5b).

    python -m jobs.export_index --config configs/quickstart.yaml
    python -m jobs.export_index --config configs/quickstart.yaml --set export.backend=hnsw

Writes ``<run>/index/<model>/`` (Annoy's items.ann, HNSW's items.hnsw or exact codes, with
manifest.json, as ``export.backend`` says) and ``<run>/index/covisit/``; rerunning it rebuilds
and swaps each index atomically.
"""

from __future__ import annotations

import sys

from jobs.common import run_job


def main(argv: list[str] | None = None) -> int:
    from recemb.index.stage import export_run

    def body(cfg):
        manifests = export_run(cfg.run_dir, cfg.export, cfg.prepared_dir / "events.parquet")
        return {
            name: {"kind": m["kind"], "count": m["count"], "recall_at_10": (m.get("certified") or {}).get("recall")}
            for name, m in manifests.items()
        }

    return run_job(
        "Export every EmbeddingSet of the run to <run>/index/<model>/ and the co-visitation table to "
        "<run>/index/covisit/.",
        body,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
