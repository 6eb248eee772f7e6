"""`recemb evaluate`: every protocol the dataset supports, baselines beside models.

:func:`evaluate` builds the split of each protocol in ``eval.protocols``
(DESIGN.md §7) that the data supports, runs every baseline in
``eval.baselines`` and every model scorer it is given (the registered models
of ``eval.models``, EmbeddingSets on disk: recemb.stages.evaluate) through
the protocol runner on the same split, and writes ``<run>/eval/metrics.json``. On the protocols of
``eval.select_query`` each model's query is first chosen on the validation
split (recemb.eval.query_choice) and its rows say which::

    {"dataset": str, "config": {...}, "recemb_version": str,
     "protocols": {"ml": {"split": {counts}, "rows": [
         {"model": "popularity", "recall@10": ..., ..., "queries": int,
          "fit_s": float, "score_s": float}, ...]},
      "imp": {..., "rows": [{..., "query": "mean"}, ...],
              "query_choice": {model: {"query", "metric", "validation": {choice: value}, ...}}}, ...},
     "skipped": {"imp": "why", ...}}

The pieces (:func:`protocol_inputs`, :func:`baseline_scorers`,
:func:`run_rows`) are public so that benchmarks can add peer scorers to the
same splits.

Catalogues (the item index space scored per query):

=======  ==============================================================
ml       every item with an event (train, validation or test)
sess     the train items (DESIGN.md §7)
imp      every item in the history events or the impressions
cold     every item with an event, cold items included
=======  ==============================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recemb import __version__
from recemb.data import splits
from recemb.data.dataset import Dataset
from recemb.data.repeats import resolve_exclude_seen
from recemb.data.sessions import sessionize
from recemb.data.vocab import Vocab
from recemb.errors import ConfigError
from recemb.eval.baselines import ItemKNNScorer, PopularityScorer, RandomScorer
from recemb.eval.config import EvalConfig
from recemb.eval.protocols import IMPRESSION_CLICK, run_protocol
from recemb.eval.query_choice import choose_queries
from recemb.eval.scorers import Scorer
from recemb.eval.tables import format_tables
from recemb.eval.validation import validation_split
from recemb.io import atomic_path, write_json
from recemb.progress import Progress

BASELINES = ("popularity", "knn", "knn-last", "knn-recency", "random")
PROTOCOLS = ("ml", "sess", "imp", "cold")
IMP_MAX_BATCH = 1024


class ProtocolNotSupported(Exception):
    """The dataset lacks what a protocol needs (reported under ``skipped``, not raised)."""


def protocol_inputs(
    ds: Dataset, protocol: str, cfg: EvalConfig, gap_minutes: float = 30.0, fold: int = 0
) -> tuple[Any, Vocab]:
    """Build ``(split, catalogue)`` of one protocol, or raise :class:`ProtocolNotSupported`.

    ml and cold need only events; sess needs session ids (events without
    one are sessionized by an inactivity gap of ``gap_minutes``); imp needs
    an impressions table. ``fold`` picks cold's disjoint cold-item set.
    """
    ev = ds.events
    split: splits.ColdItemSplit | splits.SessionSplit | splits.ImpressionSplit
    if protocol == "ml":
        return splits.leave_last_out(ev), Vocab.from_ids(ev["item_id"])
    if protocol == "cold":
        split = splits.cold_item_split(ev, cfg.cold_fraction, cfg.seed, fold)
        return split, Vocab.from_ids(ev["item_id"])
    if protocol == "sess":
        if ev["session_id"].null_count():
            ev = sessionize(ev, gap_minutes)
        split = splits.session_split(ev)
        if split.test.height == 0:
            raise ProtocolNotSupported("no test session keeps >= 2 events on train items")
        return split, Vocab.from_ids(split.train["item_id"])
    if protocol == "imp":
        if ds.impressions is None or ds.impressions.height == 0:
            raise ProtocolNotSupported("the dataset has no impressions table")
        split = splits.impression_split(ev, ds.impressions)
        return split, Vocab.from_ids(pl.concat([ev["item_id"], ds.impressions["item_id"]]))
    raise ConfigError(f"eval.protocols: unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def validation_inputs(
    ds: Dataset, protocol: str, e: EvalConfig, fraction: float = 0.1, gap_minutes: float = 30.0
) -> tuple[Any, Vocab]:
    """The validation split of ``protocol`` on ``ds`` and its catalogue; the test part is dropped here."""
    split, catalogue = protocol_inputs(ds, protocol, e, gap_minutes)
    return validation_split(protocol, split, catalogue, fraction)


def baseline_scorers(names: Iterable[str], protocol: str, seed: int = 0) -> dict[str, Scorer]:
    """Baseline scorers by config name, set up for ``protocol``.

    ``knn`` is the protocol's reference kNN: sum of cosines over the user's
    items for ml/cold/imp, the last item's neighbours for sess. Co-occurrence
    units are sessions under sess and users elsewhere. Under imp, popularity
    counts the clicks of earlier impressions only (history counts rank shown
    items at chance, DESIGN.md §10), refitted on a rolling origin
    (``eval.imp_popularity_refit``).
    """
    unit = "session" if protocol == "sess" else "user"
    out: dict[str, Scorer] = {}
    for name in names:
        if name == "popularity":
            events = [IMPRESSION_CLICK] if protocol == "imp" else None
            out[name] = PopularityScorer(events=events, name=name)
        elif name == "knn":
            out[name] = ItemKNNScorer("last" if protocol == "sess" else "sum", unit, name=name)
        elif name in ("knn-last", "knn-recency"):
            out[name] = ItemKNNScorer(name.split("-")[1], unit, name=name)
        elif name == "random":
            out[name] = RandomScorer(seed, name=name)
        else:
            raise ConfigError(f"eval.baselines: unknown baseline {name!r}; choose from {BASELINES}")
    return out


def runner_options(protocol: str, e: EvalConfig) -> dict[str, dict[str, Any]]:
    """Extra runner arguments per scorer name: under imp, popularity is refitted on a rolling origin."""
    if protocol == "imp" and e.imp_popularity_refit:
        return {"popularity": {"refit_every": e.imp_popularity_refit}}
    return {}


def run_rows(
    protocol: str,
    split: Any,
    catalogue: Vocab,
    scorers: Mapping[str, Scorer],
    ks: list[int],
    batch_size: int = 4096,
    seed: int = 0,
    log=None,
    options: Mapping[str, dict[str, Any]] | None = None,
    common: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One result row per scorer, in order: ``{"model": name, metrics..., "queries", "fit_s", "score_s"}``.

    Under imp the batch is capped at :data:`IMP_MAX_BATCH` queries: news
    catalogues are wide and every query scores a full ``[N]`` row.
    ``options`` maps a scorer name to extra runner arguments (e.g. ``refit_every``);
    ``common`` are runner arguments of every scorer (e.g. ``exclude_seen``).
    """
    if protocol == "imp":
        batch_size = min(batch_size, IMP_MAX_BATCH)
    rows = []
    for name, scorer in scorers.items():
        t0 = time.perf_counter()
        extra = {**(common or {}), **(options or {}).get(name, {})}
        res = run_protocol(protocol, split, scorer, catalogue, ks, batch_size=batch_size, seed=seed, **extra)
        rows.append({"model": name, **res})
        if log:
            log(f"  {protocol:5s} {name:24s} done in {time.perf_counter() - t0:.1f}s")
    return rows


POOLED_SUMS = ("queries", "fit_s", "score_s", "refits")
MASKING_PROTOCOLS = ("ml", "cold")  # the runners that mask seen items (eval.exclude_seen)


def pool_folds(fold_rows: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of several folds (same models, same order) -> one row per model.

    Metrics are means over each fold's queries, so their query-weighted mean
    is the metric over all folds' queries (exact for recall, NDCG, MRR and
    hit rate; for coverage and popularity bias, the mean over folds).
    Counts and times are summed; ``folds`` records how many were pooled.
    """
    pooled = []
    for per_fold in zip(*fold_rows):
        n = np.array([r["queries"] for r in per_fold], dtype=np.float64)
        row: dict[str, Any] = {"model": per_fold[0]["model"]}
        for key in per_fold[0]:
            if key == "model":
                continue
            values = np.array([r[key] for r in per_fold], dtype=np.float64)
            if key in POOLED_SUMS:
                total = values.sum()
                row[key] = int(total) if key in ("queries", "refits") else float(total)
            else:
                row[key] = float((values * n).sum() / n.sum())
        pooled.append(row | {"folds": len(per_fold)})
    return pooled


def split_counts(split: Any) -> dict[str, int]:
    """Row counts of each table of a split (for the record in metrics.json)."""
    out = {}
    for field, value in vars(split).items():
        if isinstance(value, (pl.DataFrame, pl.Series)):
            out[field] = len(value)
    return out


def evaluate(
    ds: Dataset,
    e: EvalConfig,
    out_dir: str | Path,
    scorers_for: Callable[[str], Mapping[str, Scorer]] | None = None,
    gap_minutes: float = 30.0,
    record: Mapping[str, Any] | None = None,
    candidates: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the evaluation ``e`` on ``ds``; write and return ``<out_dir>/metrics.json``'s content.

    Args:
        ds: the prepared dataset.
        e: the ``eval:`` section (protocols, cut-offs, baselines).
        out_dir: where ``metrics.json`` and ``tables.txt`` go (``<run>/eval``).
        scorers_for: ``protocol -> {name: scorer}`` of the models and EmbeddingSets
            to run beside the baselines (recemb.stages.evaluate builds them from
            the model registry); each is fitted on every split of that protocol.
        gap_minutes: the sessionization gap for sources without session ids.
        record: the configuration to store with the results.
        candidates: a scored candidates row (recemb.eval.candidates_eval), added
            to its protocol's table.

    Protocols the dataset cannot support are listed under ``skipped`` with the
    reason. Progress: a bar over the (protocol, fold, model) runs on a
    terminal, a line per finished model in logs (recemb.progress).
    """
    results: dict[str, Any] = {
        "dataset": ds.name,
        "config": dict(record or {}),
        "recemb_version": __version__,
        "protocols": {},
        "skipped": {},
    }
    # Scorers are fitted by the runner on each split, so one set per protocol serves every fold.
    scorers_of = {
        p: {**baseline_scorers(e.baselines, p, e.seed), **(scorers_for(p) if scorers_for else {})} for p in e.protocols
    }
    folds_of = {p: e.cold_folds if p == "cold" else 1 for p in e.protocols}
    chosen: dict[str, dict[str, Any]] = {}  # protocol -> model -> its query choice on validation
    progress = Progress("evaluate", sum(len(scorers_of[p]) * folds_of[p] for p in e.protocols), "model")

    def model_done(line: str) -> None:
        progress.note(line)
        progress.update(1)

    with progress:
        for protocol in e.protocols:
            folds, scorers = folds_of[protocol], scorers_of[protocol]
            ks = list(e.imp_k if protocol == "imp" else e.k)
            fold_rows: list[list[dict[str, Any]]] = []
            counts: dict[str, int] = {}
            for fold in range(folds):
                try:
                    split, catalogue = protocol_inputs(ds, protocol, e, gap_minutes, fold)
                except ProtocolNotSupported as why:
                    results["skipped"][protocol] = str(why)
                    break
                if folds > 1:
                    progress.note(f"  {protocol} fold {fold + 1}/{folds}")
                masking = {"exclude_seen": e.exclude_seen} if protocol in MASKING_PROTOCOLS else None
                if protocol in e.select_query:
                    chosen[protocol] = choose_queries(protocol, split, catalogue, scorers, e, masking, progress.note)
                rows = run_rows(
                    protocol,
                    split,
                    catalogue,
                    scorers,
                    ks,
                    e.batch_size,
                    e.seed,
                    model_done,
                    runner_options(protocol, e),
                    masking,
                )
                for row in rows:
                    if row["model"] in chosen.get(protocol, {}):
                        row["query"] = chosen[protocol][row["model"]]["query"]
                fold_rows.append(rows)
                if protocol in MASKING_PROTOCOLS:
                    counts["exclude_seen"] = int(resolve_exclude_seen(e.exclude_seen, split.train))
                for key, n in split_counts(split).items():
                    counts[key] = counts.get(key, 0) + n
                counts["catalogue"] = len(catalogue)
            if not fold_rows:
                continue
            results["protocols"][protocol] = {
                "split": counts | ({"folds": folds} if folds > 1 else {}),
                "rows": pool_folds(fold_rows) if folds > 1 else fold_rows[0],
            } | ({"query_choice": chosen[protocol]} if protocol in chosen else {})
        progress.summary = f"{len(results['protocols'])} protocol(s)"
    if candidates is not None:  # written candidate lists, scored against their own holdout
        part = results["protocols"].get(candidates["protocol"])
        if part is not None:
            part["rows"].append(candidates["row"])
        else:
            results["candidates"] = dict(candidates)
    out = Path(out_dir)
    write_json(out / "metrics.json", results)
    with atomic_path(out / "tables.txt") as tmp:
        tmp.write_text(format_tables(results) + "\n")
    return results
