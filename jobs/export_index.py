"""Export the run's EmbeddingSets to Annoy indexes as a Ray job (DESIGN.md §5b).

    python -m jobs.export_index --config configs/quickstart.yaml

Writes ``<run>/index/<model>/`` (items.ann + manifest.json); rerunning it
rebuilds and swaps each index atomically.
"""

from __future__ import annotations

import sys

from jobs.common import run_job


def main(argv: list[str] | None = None) -> int:
    from recemb.index.stage import export_run

    def body(cfg):
        manifests = export_run(cfg.run_dir, cfg.export, cfg.prepared_dir / "events.parquet")
        return {name: {"count": m["count"], "recall_at_10": m.get("recall_at_10")} for name, m in manifests.items()}

    return run_job(
        "Export every EmbeddingSet of the run to <run>/index/<model>/ and the co-visitation table to "
        "<run>/index/covisit/.",
        body,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
