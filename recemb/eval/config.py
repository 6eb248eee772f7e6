"""The ``eval:`` section: protocols, cut-offs, baselines and models to evaluate (DESIGN.md §7)."""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from recemb.data.repeats import ExcludeSeen
from recemb.section import Section

ProtocolName = Literal["ml", "sess", "imp", "cold"]
SelectableProtocol = Literal["ml", "sess", "imp"]  # the protocols with a validation split


class EvalConfig(Section):
    """Evaluation (recemb.eval): protocols of DESIGN.md §7 and baselines."""

    protocols: list[ProtocolName] = Field(default_factory=lambda: list[ProtocolName](["ml", "sess"]))
    k: list[int] = Field(default_factory=lambda: [10, 20])  # cut-offs of ml, sess and cold
    imp_k: list[int] = Field(default_factory=lambda: [5, 10])  # nDCG@K / CTR@K of imp (MIND's)
    baselines: list[str] = Field(default_factory=lambda: ["popularity", "knn"])
    # recemb models fitted on each protocol's train split with their config section.
    # Names are checked against the model registry when evaluation builds its scorers
    # (e.g. item2vec, two_tower, two_tower-text, content, content-random).
    models: list[str] = Field(default_factory=list)
    # Protocols the content* and two_tower-* models run on. Content exists for cold
    # items, and each run fits item2vec plus the content alignment, the costly part.
    content_protocols: list[ProtocolName] = Field(default_factory=lambda: list[ProtocolName](["cold"]))
    embeddings: dict[str, str] = Field(default_factory=dict)  # name -> EmbeddingSet directory to evaluate
    # Also evaluate every <run>/<model>/embeddings. Off by default: `recemb train`
    # fits on all events, test included, so those rows would be optimistic.
    run_embeddings: bool = False
    query: Literal["last", "mean", "mean_last_n", "recency"] = "mean_last_n"
    query_last_n: int = Field(5, ge=1)
    # Protocols on which each model's query (its own encoder, or one pooling of its item vectors) is
    # chosen on the validation split inside the train part (recemb.eval.query_choice): one more fit
    # per model. On imp by default: a slate shown later is ranked by long-term taste, not the next click.
    select_query: list[SelectableProtocol] = Field(default_factory=lambda: list[SelectableProtocol](["imp"]))
    scoring: Literal["cosine", "dot"] = "cosine"
    # P-ML / P-COLD: mask the user's seen items (the target too when it is one), as the candidate
    # job and the service drop them; auto: when under 5% of events repeat an item (recemb.data.repeats).
    exclude_seen: ExcludeSeen = "auto"
    # A row for production's blend (the candidates: section's sources and quotas) with every
    # source fitted on the split, beside the models (ml, sess; recemb.eval.blend_scorer).
    candidates: bool = True
    cold_fraction: float = Field(0.15, gt=0, lt=1)
    # P-COLD on this many disjoint cold-item sets (one model fit each), pooled: more
    # cold targets, less noise. ML-100K has ~70 cold test targets per 15% fold.
    cold_folds: int = Field(1, ge=1)
    # P-IMP: refit popularity on a rolling origin (a polars duration; null = fit once).
    # News popularity lives for hours: frozen counts score AUC ~0.51 on MIND, hourly ~0.54.
    imp_popularity_refit: str | None = "1h"
    batch_size: int = Field(4096, ge=1)
    seed: int = 0

    @pydantic.field_validator("models")
    @classmethod
    def _names_not_empty(cls, models: list[str]) -> list[str]:
        if any(not name.strip() for name in models):
            raise ValueError("eval.models has an empty name; list model names such as [item2vec, two_tower]")
        return models

    @pydantic.model_validator(mode="after")
    def _folds_fit(self) -> EvalConfig:
        if self.cold_folds * self.cold_fraction > 1 + 1e-9:
            raise ValueError(
                f"eval.cold_folds x eval.cold_fraction = {self.cold_folds} x {self.cold_fraction} > 1: "
                "the folds' cold items must be disjoint; lower one of them"
            )
        return self
