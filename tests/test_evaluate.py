"""`recemb evaluate` end to end on a tiny synthetic dataset, and the tables."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from recemb.config import build_config
from recemb.embeddings import EmbeddingSet
from recemb.errors import ConfigError
from recemb.eval.evaluate import baseline_scorers
from recemb.eval.tables import format_table, format_tables
from recemb.stages.evaluate import evaluate_run as evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_synth_dir):
    """A tiny synthetic dataset and a topic one-hot EmbeddingSet (the 'trivial model')."""
    root, data = tmp_path_factory.mktemp("eval"), tiny_synth_dir
    items = pl.read_parquet(data / "items.parquet")
    onehot = np.eye(6, dtype=np.float32)[items["topic"].to_numpy()]
    EmbeddingSet(items["item_id"], onehot, kind="topic_onehot", normalized=True).save(root / "topics")
    return root, data


def _cfg(root, data, **eval_cfg):
    tree = {
        "run": {"name": "t", "dir": str(root / "runs")},
        "data": {"prepared": str(data)},
        "eval": {
            "protocols": ["ml", "sess", "imp", "cold"],
            "baselines": ["popularity", "knn", "random"],
            "embeddings": {"topics": str(root / "topics")},
            "query": "mean",
            **eval_cfg,
        },
    }
    return build_config(tree)


def test_evaluate_end_to_end(run):
    root, data = run
    res = evaluate(_cfg(root, data))
    path = root / "runs" / "t" / "eval" / "metrics.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["dataset"] == "synth" and on_disk["skipped"] == {}
    assert set(on_disk["protocols"]) == {"ml", "sess", "imp", "cold"}
    assert on_disk["config"]["eval"]["embeddings"] == {"topics": str(root / "topics")}
    blend = ["covisit", "candidates[covisit+topics]"]  # production's blend, fitted like the models (ml, sess)
    for protocol, part in res["protocols"].items():
        models = [r["model"] for r in part["rows"]]
        assert models == ["popularity", "knn", "random", "topics"] + (blend if protocol in ("ml", "sess") else [])
        for row in part["rows"]:
            assert row["queries"] > 0 and row["fit_s"] >= 0 and row["score_s"] >= 0
    rows = {p: {r["model"]: r for r in part["rows"]} for p, part in res["protocols"].items()}
    # The true topics carry real signal: they must beat random scores.
    assert rows["ml"]["topics"]["recall@20"] > rows["ml"]["random"]["recall@20"]
    assert rows["sess"]["topics"]["recall@20"] > rows["sess"]["random"]["recall@20"]
    assert rows["imp"]["topics"]["auc"] > rows["imp"]["random"]["auc"]
    assert rows["cold"]["topics"]["recall@20"] > rows["cold"]["random"]["recall@20"]
    for protocol in ("ml", "sess"):  # the blend places its sources' items: it must beat random too
        assert rows[protocol]["candidates[covisit+topics]"]["recall@20"] > rows[protocol]["random"]["recall@20"]

    text = format_tables(res)
    assert text == (root / "runs" / "t" / "eval" / "tables.txt").read_text().rstrip("\n")
    for title in ("P-ML · synth", "P-SESS · synth", "P-IMP · synth", "P-COLD · synth"):
        assert title in text
    assert "recall@20" in text and "fit_s" in text and "topics" in text


def test_protocols_the_data_cannot_support_are_skipped(run, tmp_path):
    root, data = run
    # Same events, no impressions table: imp is skipped with the reason.
    from recemb.data.dataset import load_dataset, write_dataset

    ds = load_dataset(data)
    ds.impressions = None
    small = write_dataset(ds, tmp_path / "noimp")
    cfg = build_config(
        {
            "run": {"name": "s", "dir": str(tmp_path / "runs")},
            "data": {"prepared": str(small)},
            "eval": {"protocols": ["imp"], "baselines": ["popularity"]},
        }
    )
    res = evaluate(cfg)
    assert res["protocols"] == {} and "no impressions" in res["skipped"]["imp"]
    assert "P-IMP · synth: skipped (the dataset has no impressions table)" in format_tables(res)


def test_unknown_baseline_and_missing_embeddings_fail_before_running(run, tmp_path):
    root, data = run
    with pytest.raises(ConfigError, match="unknown baseline 'pop'.*popularity"):
        evaluate(_cfg(root, data, baselines=["pop"]))
    with pytest.raises(Exception, match="no such EmbeddingSet directory"):
        evaluate(_cfg(root, data, embeddings={"x": str(tmp_path / "nope")}))


def test_unknown_eval_model_names_the_registered_ones_before_any_stage_runs(run):
    from recemb.pipeline import run_pipeline

    root, data = run
    cfg = _cfg(root, data, models=["item2vec", "two-towr"]).model_copy(update={"stages": ["data", "evaluate"]})
    with pytest.raises(ConfigError, match="unknown model 'two-towr'.*two_tower-text"):
        run_pipeline(cfg)
    assert not (root / "runs" / "t" / "stages").exists()  # the data stage never ran


def test_baseline_names_per_protocol():
    sess = baseline_scorers(["knn", "knn-recency"], "sess")
    assert (sess["knn"].mode, sess["knn"].unit) == ("last", "session")
    assert (sess["knn-recency"].mode, sess["knn-recency"].unit) == ("recency", "session")
    ml = baseline_scorers(["knn", "popularity"], "ml")
    assert (ml["knn"].mode, ml["knn"].unit, ml["popularity"].events) == ("sum", "user", None)
    assert baseline_scorers(["popularity"], "imp")["popularity"].events == ["impression_click"]


def test_format_table_aligns_columns():
    text = format_table(
        "T",
        [
            {"model": "a", "recall@10": 0.5, "queries": 3, "fit_s": 1.0, "score_s": 0.25},
            {"model": "longer-name", "recall@10": 0.125, "mrr@10": 0.1, "queries": 3, "fit_s": 0.0, "score_s": 2.0},
        ],
    )
    lines = text.splitlines()
    assert lines[0] == "T"
    assert lines[2].split() == ["model", "recall@10", "mrr@10", "queries", "fit_s", "score_s"]
    assert lines[4].split() == ["a", "0.5000", "-", "3", "1.00", "0.25"]
    assert len({len(line) for line in lines[1:]}) == 1  # every line padded to the same width


def test_format_table_selects_columns_and_prints_counts_as_ints():
    rows = [{"model": "m", "auc": 0.75, "n_impressions": 136.0, "mrr": 0.2, "fit_s": 0.5, "score_s": 0.5}]
    lines = format_table("T", rows, columns=["auc", "n_impressions"]).splitlines()
    assert lines[2].split() == ["model", "auc", "n_impressions", "fit_s", "score_s"]
    assert lines[4].split() == ["m", "0.7500", "136", "0.50", "0.50"]


def test_item2vec_is_fitted_on_the_train_split_only(tmp_path):
    """eval.models trains item2vec inside the runner: its vocabulary never holds a test-only item."""
    from recemb.config import build_config
    from recemb.data import splits
    from recemb.data.dataset import load_dataset
    from recemb.data.synth import generate
    from recemb.data.vocab import Vocab
    from recemb.eval.protocols import run_protocol
    from recemb.stages.evaluate import model_scorers

    cfg = build_config(
        {
            "run": {"name": "r", "dir": str(tmp_path)},
            "data": {"synth": {"users": 80, "items": 60, "events": 4000, "impressions": 0, "images": False}},
            "item2vec": {"epochs": 2, "threads": 1},
            "eval": {"models": ["item2vec"]},
        }
    )
    generate(cfg.data.synth, cfg.prepared_dir)
    ev = load_dataset(cfg.prepared_dir).events
    split = splits.leave_last_out(ev)
    scorer = model_scorers(cfg, "ml", load_dataset(cfg.prepared_dir))["item2vec"]
    res = run_protocol("ml", split, scorer, Vocab.from_ids(ev["item_id"]), [10])
    assert res["queries"] == split.test.height
    trained = set(scorer.model.vocab.ids.tolist())
    assert trained <= set(split.train["item_id"].to_list())


def test_pooled_folds_weight_each_fold_by_its_queries():
    from recemb.eval.evaluate import pool_folds

    # fold 1: 10 queries, recall 0.5; fold 2: 30 queries, recall 0.1 -> (5 + 3) / 40 = 0.2
    folds = [
        [{"model": "m", "recall@20": 0.5, "queries": 10, "fit_s": 1.0, "score_s": 0.5}],
        [{"model": "m", "recall@20": 0.1, "queries": 30, "fit_s": 2.0, "score_s": 0.5}],
    ]
    (row,) = pool_folds(folds)
    assert row == {
        "model": "m",
        "recall@20": pytest.approx(0.2),
        "queries": 40,
        "fit_s": 3.0,
        "score_s": 1.0,
        "folds": 2,
    }


def test_cold_folds_pool_in_evaluate_and_must_fit(run):
    root, data = run
    res = evaluate(_cfg(root, data, protocols=["cold"], cold_fraction=0.25, cold_folds=4))
    part = res["protocols"]["cold"]
    assert part["split"]["folds"] == 4
    rows = {r["model"]: r for r in part["rows"]}
    # Each user's test item is cold in at most one fold (in none if it is one of the N mod 4 left over).
    assert rows["popularity"]["queries"] == part["split"]["test"] > 0.9 * 150
    assert "cold_recall@20" in rows["topics"] and rows["topics"]["folds"] == 4
    assert rows["topics"]["cold_recall@20"] > rows["random"]["cold_recall@20"]
    assert "pooled over 4 folds" in format_tables(res)
    with pytest.raises(ConfigError, match="cold_folds x eval.cold_fraction"):
        _cfg(root, data, cold_fraction=0.3, cold_folds=4)
