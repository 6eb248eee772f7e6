"""Ray job: align content encoders to a behavioural EmbeddingSet -> ``<run>/content/``.

    python -m jobs.train_content --config configs/ml-100k.yaml [--set content.image=true]
    ray job submit --working-dir . -- python -m jobs.train_content --config configs/ml-100k.yaml

The alignment trains in the driver process (one small model; the GPU when
``content.device`` finds one); Ray is joined or started by ``run_job`` so the
job runs unchanged on a cluster. Needs ``<run>/<content.target>/embeddings``
(``recemb train item2vec`` first).
"""

from __future__ import annotations

import sys

from jobs.common import run_job


def main(argv: list[str] | None = None) -> int:
    from recemb.models.content.align import train_content

    return run_job("Align item content (text, categories, images) to item2vec vectors", train_content, argv)


if __name__ == "__main__":
    sys.exit(main())
