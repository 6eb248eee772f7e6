"""``TwoTowerConfig``: the ``two_tower:`` section of a pipeline YAML.

Defaults are the setting measured on ML-100K P-ML (benchmarks/two_tower.py):
mean-pooled history plus a separately pooled recent window, in-batch softmax
with temperature 0.05, logQ correction and accidental-hit removal.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recemb.models.content.config import ItemContentConfig
from recemb.section import Section


class TwoTowerConfig(Section):
    """Hyper-parameters and execution settings of the two-tower model."""

    dim: int = Field(64, ge=1)  # output embedding size D of both towers
    embedding_dim: int = Field(64, ge=1)  # size of every sparse table row
    history_length: int = Field(50, ge=1)  # most recent items before the target in the user tower
    recent_length: int = Field(5, ge=0)  # last items pooled again as a second feature; 0 = off
    min_history: int = Field(1, ge=0)  # training targets need at least this many earlier items
    # Table sizes; 0 = the vocabulary size (ids beyond a fixed size hash into it).
    item_table_size: int = Field(0, ge=0)
    category_table_size: int = Field(0, ge=0)
    user_table_size: int = Field(0, ge=0)  # per user categorical feature
    user_features: list[str] = Field(default_factory=list)  # columns of the users table (categoricals)
    item_categories: bool = True  # the items table's `category` list as an item feature
    # Hidden sizes of both towers' MLPs (the last layer maps to `dim`); [] = linear.
    mlp: list[int] = Field(default_factory=lambda: [256])
    dropout: float = Field(0.0, ge=0, lt=1)
    temperature: float = Field(0.05, gt=0)
    logq: bool = True  # subtract log of the streaming sampling-probability estimate (Yi et al. 2019)
    remove_accidental_hits: bool = True
    mixed_negatives: int = Field(0, ge=0)  # extra uniformly sampled items per batch (Yang et al. 2020)
    estimator_buckets: int = Field(1 << 16, ge=1)  # hash buckets of the frequency estimator
    estimator_alpha: float = Field(0.01, gt=0, le=1)  # its moving-average rate
    epochs: int = Field(4, ge=1)  # ML-100K validation Recall@20 peaks at 4 (fused, lr 0.05), then overfits
    batch_size: int = Field(512, ge=2)  # examples per step (per worker under Ray)
    lr: float = Field(1e-3, gt=0)  # Adam, dense layers
    emb_lr: float = Field(0.05, gt=0)  # RowWiseAdagrad (fused) / Adam lr for tables on the plain backend
    weight_decay: float = Field(0.0, ge=0)
    eval_k: int = Field(20, ge=1)  # validation Recall@K reported per epoch
    seed: int = 0
    # torchrec: EmbeddingBagCollection + fused RowWiseAdagrad under DistributedModelParallel;
    # torch: nn.EmbeddingBag + Adam (no torchrec needed; runs on CUDA machines without it);
    # auto: torchrec when importable.
    backend: Literal["auto", "torchrec", "torch"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # Content parts of the item tower (text, image, sentence embeddings), fused with
    # the id and category parts under modality dropout; all off by default.
    content: ItemContentConfig = ItemContentConfig()


# What `recemb tune` varies (recemb.tune.space).
SEARCH_SPACE: dict[str, dict[str, list]] = {
    "temperature": {"loguniform": [0.01, 0.5]},
    "epochs": {"randint": [1, 30]},
    "lr": {"loguniform": [1e-4, 1e-2]},
    "emb_lr": {"loguniform": [0.005, 0.5]},
    "dim": {"choice": [32, 64, 128]},
    "dropout": {"uniform": [0.0, 0.5]},
    "mixed_negatives": {"choice": [0, 128, 1024]},
    "history_length": {"choice": [10, 20, 50, 100]},
}
