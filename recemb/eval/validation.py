"""Validation splits: the protocol's split rebuilt inside its train part, so selection never reads test rows.

``recemb tune`` fits its trials here, and ``recemb evaluate`` chooses each
model's query here (``eval.select_query``).

=========  =================================================================
protocol   validation split (what a trial fits on / scores)
=========  =================================================================
ml         leave-last-out on train + validation: each user's validation item
           (their second-to-last event) is the target, earlier events train
sess       the latest ``fraction`` of train sessions by start time are scored
           (an official ``split`` column is ignored: it marks the test part)
imp        the latest ``fraction`` of train impressions are scored; the
           earlier ones and the history train
=========  =================================================================

The catalogue of sess is the validation train part's items (as
:func:`recemb.eval.evaluate.protocol_inputs` does for the test split); ml and
imp keep the protocol's catalogue of item ids (ids only, no events).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from recemb.data import splits
from recemb.data.vocab import Vocab
from recemb.errors import ConfigError
from recemb.eval.protocols import impression_fit_events

PROTOCOLS = ("ml", "sess", "imp")
# What a selection maximises on each protocol's validation split, when not configured (all higher-is-better).
SELECTION_METRICS = {"ml": "ndcg@10", "sess": "mrr@20", "imp": "auc"}


def metric_cutoffs(metric: str, configured: list[int]) -> list[int]:
    """The runner's cut-offs: the configured ones plus the metric's own (``ndcg@10`` needs 10)."""
    ks = set(configured)
    if "@" in metric:
        ks.add(int(metric.split("@")[1]))
    return sorted(ks)


def validation_split(protocol: str, split: Any, catalogue: Vocab, fraction: float = 0.1) -> tuple[Any, Vocab]:
    """``(split, catalogue)`` of the validation split inside ``split``'s train part (module docstring)."""
    if protocol == "sess":
        train = split.train.drop("split") if "split" in split.train.columns else split.train
        val = splits.session_split(train, fraction)
        return val, Vocab.from_ids(val.train["item_id"])
    if protocol == "imp":
        return splits.impression_split(split.history, split.train_impressions, fraction), catalogue
    if protocol == "ml":
        return splits.leave_last_out(pl.concat([split.train, split.validation], how="diagonal_relaxed")), catalogue
    raise ConfigError(f"no validation split for protocol {protocol!r}; choose one of {PROTOCOLS}")


def fit_events(protocol: str, split: Any) -> pl.DataFrame:
    """What a model is fitted on under ``protocol`` (as the protocol runner fits it)."""
    return impression_fit_events(split) if protocol == "imp" else split.train


def scored_events(protocol: str, split: Any) -> pl.DataFrame:
    """The rows a validation split scores (targets / shown items): never rows of the test part."""
    if protocol == "imp":
        return split.test_impressions
    return split.test
