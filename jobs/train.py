"""Train any registered model as a Ray job.

    python -m jobs.train --model two_tower --config configs/ml-100k.yaml [--set ray.workers=2]
    ray job submit --working-dir . -- python -m jobs.train --model item2vec --config configs/quickstart.yaml

``--model`` is a registry name (recemb.stages.registry: item2vec, two_tower,
content, ...). Writes ``<run>/<model>/``; checkpoints under
``ray.storage_path`` (default ``<run>/ray``), and a rerun with the same
``ray.name`` resumes from the last one.
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import run_job


def main(argv: list[str] | None = None, model: str | None = None) -> int:
    from recemb.stages.registry import MODELS, model_spec

    if model is None:
        ap = argparse.ArgumentParser(add_help=False)
        ap.add_argument("--model", required=True, choices=sorted({n for s in MODELS.values() for n in (s.name, s.cli)}))
        known, argv = ap.parse_known_args(argv)
        model = known.model
    spec = model_spec(model)
    return run_job(f"Train {spec.name} on Ray Train: {spec.summary}", spec.train, argv)


if __name__ == "__main__":
    sys.exit(main())
