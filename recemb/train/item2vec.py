"""`recemb train item2vec CONFIG`: item2vec on every prepared event -> ``<run>/item2vec/``.

Writes ``embeddings/`` (an EmbeddingSet), ``item2vec.w2v`` (word2vec text
format, readable by gensim's ``KeyedVectors.load_word2vec_format``) and
``metrics.json`` (per-epoch loss and throughput). These vectors are trained
on all events, for export and serving; the evaluation tables fit item2vec
on each protocol's train split instead (recemb.eval.model_scorers).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from recemb.config import PipelineConfig
from recemb.data.dataset import load_dataset
from recemb.io import write_json

log = logging.getLogger(__name__)


def train_item2vec(cfg: PipelineConfig) -> Path:
    """Train on ``cfg.prepared_dir``'s events with ``cfg.item2vec``; return ``<run>/item2vec``."""
    from recemb.models.item2vec import Item2Vec

    out = cfg.run_dir / "item2vec"
    events = load_dataset(cfg.prepared_dir).events
    t0 = time.perf_counter()
    model = Item2Vec(cfg.item2vec).fit(events)
    seconds = time.perf_counter() - t0
    metrics = {"train_seconds": seconds, "epochs": model.history, "dropped": model.dropped}
    emb = model.embeddings()
    emb.save(out / "embeddings")
    model.save_word2vec_format(out / "item2vec.w2v")
    write_json(out / "metrics.json", metrics)
    log.info("item2vec: %d items, dim %d, %.1fs -> %s", len(emb), emb.dim, seconds, out)
    return out
