"""`eval.select_query`: each model's query chosen on the validation split, never on the test part."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from recemb.config import build_config
from recemb.data.dataset import load_dataset
from recemb.errors import ConfigError
from recemb.eval.embedding_scorer import EmbeddingScorer
from recemb.eval.evaluate import protocol_inputs
from recemb.eval.model_scorer import OWN_QUERY, ModelScorer
from recemb.eval.protocols import impression_fit_events
from recemb.eval.queries import user_histories
from recemb.eval.query_choice import choose_queries
from recemb.eval.validation import validation_split
from recemb.pooling import QUERY_MODES
from recemb.stages.evaluate import evaluate_run, model_scorers


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_synth_dir):
    root, data = tmp_path_factory.mktemp("qc"), tiny_synth_dir
    cfg = build_config(
        {
            "run": {"name": "q", "dir": str(root / "runs")},
            "data": {"prepared": str(data)},
            "two_tower": {"epochs": 1, "dim": 16, "embedding_dim": 16, "mlp": [32]},
            "eval": {"protocols": ["imp"], "baselines": ["knn"], "models": ["two_tower"], "candidates": False},
        }
    )
    return cfg, load_dataset(data)


class RecordingScorer(ModelScorer):
    """A ModelScorer that records what it is fitted on and which query scores each call."""

    def __init__(self, inner: ModelScorer):
        super().__init__(inner.build, inner.name, inner.unit, inner.query, inner.last_n, inner.scoring, inner.side)
        self.fitted_on: list[pl.DataFrame] = []

    def fit(self, train, catalogue, on_epoch=None):
        self.fitted_on.append(train)
        return super().fit(train, catalogue, on_epoch)


def test_the_choice_is_the_best_on_validation_and_never_reads_test_impressions(setup):
    cfg, ds = setup
    split, catalogue = protocol_inputs(ds, "imp", cfg.eval)
    scorer = RecordingScorer(model_scorers(cfg, "imp", ds)["two_tower"])
    chosen = choose_queries("imp", split, catalogue, {"two_tower": scorer}, cfg.eval)["two_tower"]

    # One fit, on the validation split's fit events: the history and the earlier train impressions.
    (fitted,) = scorer.fitted_on
    val, _ = validation_split("imp", split, catalogue)
    assert fitted.equals(impression_fit_events(val))
    test_ids = set(split.test_impressions["impression_id"].to_list())
    assert not test_ids & set(fitted["session_id"].drop_nulls().to_list())
    assert not test_ids & set(val.test_impressions["impression_id"].to_list())

    # Every choice was scored, and the one kept is the best of them.
    assert set(chosen["validation"]) == {OWN_QUERY, *QUERY_MODES} and chosen["metric"] == "auc"
    assert chosen["validation"][chosen["query"]] == max(chosen["validation"].values())
    assert scorer.own_query == (chosen["query"] == OWN_QUERY)


def test_a_pooled_choice_scores_as_the_models_item_vectors_pooled(setup):
    cfg, ds = setup
    split, catalogue = protocol_inputs(ds, "imp", cfg.eval)
    train = impression_fit_events(split)
    scorer = model_scorers(cfg, "imp", ds)["two_tower"].fit(train, catalogue)
    users = split.test_impressions["user_id"].unique().sort().head(20)
    batch = user_histories(split.history, catalogue, users, order=("ts",)).batch(0, len(users))
    own = scorer.score_queries(batch)

    scorer.use_query("mean")
    pooled = EmbeddingScorer(scorer.model.item_embeddings(), query="mean", scoring=cfg.eval.scoring).fit(
        train, catalogue
    )
    np.testing.assert_allclose(scorer.score_queries(batch), pooled.score_queries(batch), rtol=1e-5, atol=1e-6)
    assert not np.allclose(scorer.score_queries(batch), own)
    # The choice holds for the next fit (the test split's), and the own query comes back unchanged.
    scorer.fit(train, catalogue)
    assert scorer.pools_queries
    scorer.use_query(OWN_QUERY)
    assert not scorer.pools_queries
    with pytest.raises(ConfigError, match="not one of"):
        scorer.use_query("median")


def test_evaluate_reports_each_models_query_and_its_validation_scores(setup):
    cfg, _ = setup
    res = evaluate_run(cfg)
    rows = {r["model"]: r for r in res["protocols"]["imp"]["rows"]}
    choice = res["protocols"]["imp"]["query_choice"]["two_tower"]
    assert rows["two_tower"]["query"] == choice["query"] and "query" not in rows["knn"]
    on_disk = json.loads((cfg.run_dir / "eval" / "metrics.json").read_text())
    assert on_disk["protocols"]["imp"]["query_choice"]["two_tower"]["query"] == choice["query"]
    off = evaluate_run(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"select_query": []})}))
    assert "query" not in {k for r in off["protocols"]["imp"]["rows"] for k in r}
