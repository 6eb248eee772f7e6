"""`recemb train item2vec CONFIG`: item2vec on every prepared event -> ``<run>/item2vec/``.

Writes ``embeddings/`` (an EmbeddingSet), ``item2vec.w2v`` (word2vec text
format, readable by gensim's ``KeyedVectors.load_word2vec_format``) and
``metrics.json`` (per-epoch loss and throughput). These vectors are trained
on all events, for export and serving; the evaluation tables fit item2vec
on each protocol's train split instead (recemb.eval.model_scorer).

Training always goes through the checkpointed loop of
:mod:`recemb.train.item2vec_ray`, driven by the ``ray:`` section
(:class:`recemb.train.ray_config.RayTrainConfig`): ``ray.workers``
data-parallel Ray Train workers, or 0 to run in this process; either way a
checkpoint per epoch under ``<run>/ray/item2vec/`` and resume from it.
"""

from __future__ import annotations

from pathlib import Path

from recemb.config import PipelineConfig
from recemb.train.ray_config import RayTrainConfig


def train_item2vec(cfg: PipelineConfig, ray: RayTrainConfig | None = None) -> Path:
    """Train on ``cfg.prepared_dir``'s events with ``cfg.item2vec``; return ``<run>/item2vec``.

    ``ray`` overrides ``cfg.ray`` (workers, checkpoints, failures).
    """
    from recemb.train.item2vec_ray import train_item2vec_ray

    return train_item2vec_ray(cfg, ray if ray is not None else cfg.ray)
