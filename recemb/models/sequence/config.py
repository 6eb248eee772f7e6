"""``SequenceConfig``: the ``sequence:`` section of a pipeline YAML.

One set of defaults for every dataset (issue 14: no per-dataset tuning): a
1-layer causal Transformer over the last 50 items, item embeddings tied
between input and output, cosine scores at temperature 0.1, a full softmax
over the catalogue up to ``full_softmax_max_items`` items, and the repeat
path wherever the training data repeats items. ``benchmarks/sequence.py`` measures each switch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recemb.section import Section


class SequenceConfig(Section):
    """Hyper-parameters and execution settings of the sequence model (recemb.models.sequence)."""

    dim: int = Field(64, ge=2)  # item embedding = hidden size D
    max_length: int = Field(50, ge=1)  # most recent items a query reads; training windows hold as many
    encoder: Literal["transformer", "gru"] = "transformer"  # causal self-attention blocks, or a GRU (GRU4Rec)
    layers: int = Field(1, ge=1)  # transformer blocks / GRU layers (2 measured no better, at 1.3x the time)
    heads: int = Field(2, ge=1)  # attention heads; dim must divide by it
    dropout: float = Field(0.2, ge=0, lt=1)  # on embeddings, attention and feed-forward outputs
    time_gaps: bool = True  # bucketed log2 gap to the previous item as an input embedding
    gap_buckets: int = Field(24, ge=2)  # bucket 0 = unknown / first item; the rest log2(1 + seconds)
    # The gap from the last item to the moment of the query (in training: to the target), when the
    # caller knows it (an impression's time): a long absence predicts a new interest, not the last one.
    # Hidden in training with query_gap_dropout, so queries without a time work as well.
    query_gap: bool = True
    query_gap_dropout: float = Field(0.5, ge=0, le=1)
    # The items table's categories in every item vector (input and output): catalogue items
    # without events then get a vector from their categories alone (covers cold items).
    item_categories: bool = False
    # Repeat path: p = g * p_repeat(history) + (1 - g) * p_explore(catalogue). auto: on when at least
    # repeat_min_rate of the training targets repeat an item of their own history (Yoochoose 0.36,
    # ML-100K 0: there it only took probability mass; validation Recall@20 0.25 with it, 0.28 without).
    repeat: bool | Literal["auto"] = "auto"
    repeat_min_rate: float = Field(0.01, ge=0, le=1)
    # Scores: cosine of unit vectors / temperature (an angular index serves them), or the raw dot.
    scoring: Literal["cosine", "dot"] = "cosine"
    temperature: float = Field(0.1, gt=0)
    # full: softmax over every item; sampled: the target against `negatives` uniform items
    # (shared by the batch; accidental hits removed); auto: full up to full_softmax_max_items.
    loss: Literal["auto", "full", "sampled"] = "auto"
    # above it a full softmax costs over 5x a sampled one per target (benchmarks/sequence.py: 2.6x at
    # 10k items, 15x at 100k on 2 cores)
    full_softmax_max_items: int = Field(20_000, ge=1)
    negatives: int = Field(2048, ge=1)
    epochs: int = Field(30, ge=1)  # Yoochoose validation Recall@20 0.6725 at 30 vs 0.6625 at 20; 60 adds nothing
    batch_size: int = Field(128, ge=1)  # training windows per step (per worker under Ray)
    # At most this many steps an epoch (each from a fresh shuffle of all windows); none = a full pass.
    # On large data it sets how often a checkpoint is written and the learning rate schedule's epochs.
    steps_per_epoch: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0)  # Adam
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 0 at the last epoch
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = torch's default


# What `recemb tune` varies (recemb.tune.space); dims divide by the default 2 heads.
SEARCH_SPACE: dict[str, dict[str, list]] = {
    "temperature": {"loguniform": [0.03, 0.5]},
    "epochs": {"lograndint": [5, 60]},
    "lr": {"loguniform": [3e-4, 3e-3]},
    "dim": {"choice": [32, 64, 128]},
    "dropout": {"uniform": [0.0, 0.5]},
    "max_length": {"choice": [10, 20, 50, 100]},
    "negatives": {"choice": [512, 2048, 8192]},  # read only under a sampled softmax
}
