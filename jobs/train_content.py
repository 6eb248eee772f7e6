"""Ray job: align content encoders to a behavioural EmbeddingSet -> ``<run>/content/``.

    python -m jobs.train_content --config configs/ml-100k.yaml [--set content.image=true]
    ray job submit --working-dir . -- python -m jobs.train_content --config configs/ml-100k.yaml

The same as ``python -m jobs.train --model content``; the alignment runs
through the training runner (``ray.workers``: 0 = in this process, N = Ray
Train workers). Needs ``<run>/<content.target>/embeddings`` (``recemb train
item2vec`` first).
"""

from __future__ import annotations

import sys

from jobs.train import main

if __name__ == "__main__":
    sys.exit(main(model="content"))
