"""Ray job: align content encoders to a behavioural EmbeddingSet -> ``<run>/content/``.

    python -m jobs.train_content --config configs/ml-100k.yaml [--set content.image=true]
    ray job submit --working-dir . -- python -m jobs.train_content --config configs/ml-100k.yaml

The alignment runs through the shared training runner: in the driver process
with ``ray.workers = 0`` (the GPU when ``content.device`` finds one), else on
``ray.workers`` data-parallel Ray Train workers; a checkpoint per epoch. Needs ``<run>/<content.target>/embeddings``
(``recemb train item2vec`` first).
"""

from __future__ import annotations

import sys

from jobs.common import run_job


def main(argv: list[str] | None = None) -> int:
    from recemb.pipeline import stage_content

    return run_job(
        "Align item content (text, categories, images) to item2vec vectors",
        lambda cfg: stage_content(cfg, False)["dir"],
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
