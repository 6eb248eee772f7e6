"""Each model's query chosen on the protocol's validation split (``eval.select_query``).

A model can query its item space in several ways: its own encoder (the
two-tower's user tower, the sequence model's state at the last item) or its
item vectors pooled over the history (mean, mean of the last n, recency
weighted, last). Which one ranks best depends on the task more than on the
model: the next click follows the last few items, while a slate shown days
later is clicked by long-term taste (on the synthetic default's P-IMP the
sequence state scores AUC 0.65, the mean of the same model's item vectors
0.73). So, per protocol in ``eval.select_query``, every model is fitted once
on the validation split inside the train part
(:func:`recemb.eval.validation.validation_split`), each of its choices is
scored there with the protocol's selection metric, and the best is what the
test split is then scored with. The test part is never read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from recemb.data.vocab import Vocab
from recemb.eval.config import EvalConfig
from recemb.eval.model_scorer import ModelScorer
from recemb.eval.protocols import run_protocol
from recemb.eval.scorers import Prefitted, Scorer
from recemb.eval.validation import SELECTION_METRICS, fit_events, metric_cutoffs, validation_split


def choose_queries(
    protocol: str,
    split: Any,
    catalogue: Vocab,
    scorers: Mapping[str, Scorer],
    e: EvalConfig,
    runner_args: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Set the best query of every model scorer in ``scorers`` on ``split``'s validation split.

    Scorers without choices (baselines, EmbeddingSets, blends) are left as
    they are. ``runner_args`` go to the protocol runner (e.g. ``exclude_seen``).
    Returns ``{name: {"query", "metric", "validation": {choice: value}, "seconds"}}``.
    """
    # A blend's source is wrapped (SharedFit): the choice is made on the model scorer inside it.
    inner = {name: getattr(s, "scorer", s) for name, s in scorers.items()}
    models = {name: s for name, s in inner.items() if isinstance(s, ModelScorer)}
    if not models:
        return {}
    val, val_catalogue = validation_split(protocol, split, catalogue)
    train = fit_events(protocol, val)
    metric = SELECTION_METRICS[protocol]
    ks = metric_cutoffs(metric, list(e.imp_k if protocol == "imp" else e.k))
    out: dict[str, dict[str, Any]] = {}
    for name, scorer in models.items():
        t0 = time.perf_counter()
        scorer.fit(train, val_catalogue)
        values: dict[str, float] = {}
        for choice in scorer.query_choices():
            scorer.use_query(choice)
            res = run_protocol(
                protocol,
                val,
                Prefitted(scorer),
                val_catalogue,
                ks,
                batch_size=e.batch_size,
                seed=e.seed,
                **(runner_args or {}),
            )
            value = float(res[metric])
            values[choice] = value if math.isfinite(value) else float("-inf")
        best = max(values, key=values.__getitem__)  # ties: the first choice (the model's own query)
        scorer.use_query(best)
        out[name] = {
            "query": best,
            "last_n": scorer.last_n,
            "metric": metric,
            "validation": values,
            "seconds": time.perf_counter() - t0,
        }
        if log:
            log(f"  {protocol:5s} {name:24s} query {best} ({metric} {values[best]:.4f} on validation)")
    return out
