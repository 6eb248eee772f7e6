"""A small synthetic run to try, test and benchmark the service without training anything.

``make_demo_run(dir)`` writes what the pipeline would::

    <dir>/data/events.parquet          (user_id, item_id: the popularity fallback; users of 10 clicks)
    <dir>/item2vec/embeddings/          clustered random vectors, ids "i0".."i{N-1}"
    <dir>/index/item2vec/               Annoy export (recemb.index.export.export_all)
    <dir>/index/covisit/                with ``covisit=True``: the co-visitation table of those events

``make_demo_run(dir, model="sequence", tower=True)`` writes an untrained
sequence model instead (``<dir>/sequence/``: weights, items, embeddings), the
user tower ``serve.user_tower.model=sequence`` loads: the online cost of a
real tower, with no training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recemb.embeddings import EmbeddingSet
from recemb.index.export import export_all
from recemb.retrieval.covisit import CoVisitTable


def clustered_vectors(n: int, dim: int, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """``[n, dim]`` float32: cluster centres plus noise, so neighbours are meaningful."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)


def make_demo_run(
    run_dir: str | Path,
    n_items: int = 500,
    dim: int = 16,
    seed: int = 0,
    model: str = "item2vec",
    n_trees: int = 10,
    tower: bool = False,
    covisit: bool = False,
) -> Path:
    """Write a run with one exported model (see module docstring); returns ``run_dir``."""
    run_dir = Path(run_dir)
    ids = [f"i{r}" for r in range(n_items)]
    emb_dir = run_dir / model / "embeddings"
    if tower:
        _untrained_sequence_model(ids, dim, seed).save(run_dir / model)
    else:
        EmbeddingSet(ids, clustered_vectors(n_items, dim, seed=seed), kind=model).save(emb_dir)
    rng = np.random.default_rng(seed)
    # Zipf-like clicks: low row numbers are the popular items.
    clicks = np.minimum(rng.zipf(1.3, size=20 * n_items) - 1, n_items - 1)
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    events = pl.DataFrame({"user_id": [f"u{r // 10}" for r in range(len(clicks))], "item_id": [ids[c] for c in clicks]})
    events.write_parquet(run_dir / "data" / "events.parquet")
    export_all({model: emb_dir}, run_dir, n_trees=n_trees, sample=min(200, n_items), seed=seed, n_jobs=1)
    if covisit:
        CoVisitTable.build(events, unit="user", top=50).save(run_dir / "index" / "covisit")
    return run_dir


def _untrained_sequence_model(ids: list[str], dim: int, seed: int):
    """A SequenceModel over ``ids`` with its initial (random) weights: a real tower, untrained."""
    import torch

    from recemb.data.vocab import Vocab
    from recemb.models.sequence.config import SequenceConfig
    from recemb.models.sequence.model import SequenceModel
    from recemb.models.sequence.net import SequenceNet

    config = SequenceConfig(dim=dim, seed=seed)
    torch.manual_seed(seed)
    return SequenceModel.from_state(config, Vocab(ids), SequenceNet(len(ids), config).state_dict(), [])
