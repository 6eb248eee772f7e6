"""Production's blend as an evaluation row (issue 16, item 3): the same core, the same exclusion rule."""

from __future__ import annotations

import numpy as np
import pytest

from recemb.data import splits, synth
from recemb.data.config import SynthConfig
from recemb.data.dataset import load_dataset
from recemb.data.vocab import Vocab
from recemb.eval.baselines import ItemKNNScorer, PopularityScorer
from recemb.eval.blend_scorer import BlendScorer, CoVisitScorer, SharedFit
from recemb.eval.protocols import run_ml, run_sess


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    root = synth.generate(
        SynthConfig(users=200, items=150, events=6000, topics=6, impressions=0, images=False, seed=3),
        tmp_path_factory.mktemp("blend") / "data",
    )
    return load_dataset(root).events


class CountingFit:
    """A scorer that counts its fits (SharedFit must fit it once per split)."""

    def __init__(self, scorer):
        self.scorer, self.name, self.fits = scorer, scorer.name, 0

    def fit(self, train, catalogue):
        self.fits += 1
        self.scorer.fit(train, catalogue)
        return self

    def score_queries(self, queries):
        return self.scorer.score_queries(queries)


class UntiedPopularity(PopularityScorer):
    """Popularity plus a per-item offset below one count: no ties, so no random tie-breaking."""

    def score_queries(self, queries):
        scores = super().score_queries(queries)
        return scores + np.arange(scores.shape[1], dtype=np.float32) * (0.5 / scores.shape[1])


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_a_blend_of_one_source_scores_as_that_source(events, exclude_seen):
    """Popularity scores every item, so its blended list is its own top list, filtered the same way."""
    split = splits.leave_last_out(events)
    catalogue = Vocab.from_ids(events["item_id"])
    pop = UntiedPopularity()
    alone = run_ml(split, pop, catalogue, ks=(10, 20), exclude_seen=exclude_seen)
    blended = run_ml(
        split,
        BlendScorer({"pop": SharedFit(pop)}, 20, exclude_seen=exclude_seen),
        catalogue,
        ks=(10, 20),
        exclude_seen=exclude_seen,
    )
    for key in ("recall@10", "recall@20", "ndcg@10", "mrr@20"):
        assert blended[key] == pytest.approx(alone[key]), key


def test_quotas_give_the_whole_list_to_one_source(events):
    split = splits.session_split(events.drop("session_id").with_columns(session_id=events["user_id"]))
    catalogue = Vocab.from_ids(split.train["item_id"])
    knn = ItemKNNScorer("recency", "session")
    co = CoVisitScorer("session", top_m=len(catalogue))
    alone = run_sess(split, knn, catalogue, ks=(20,))
    only_knn = BlendScorer({"co": SharedFit(co), "knn": SharedFit(knn)}, 20, quotas={"co": 0, "knn": 20})
    only_co = BlendScorer({"co": SharedFit(co), "knn": SharedFit(knn)}, 20, quotas={"co": 20, "knn": 0})
    a = run_sess(split, only_knn, catalogue, ks=(20,))
    b = run_sess(split, only_co, catalogue, ks=(20,))
    # co-visitation with every neighbour kept is knn-recency: all three agree up to ties.
    assert a["recall@20"] == pytest.approx(alone["recall@20"], abs=0.01)
    assert b["recall@20"] == pytest.approx(alone["recall@20"], abs=0.01)


def test_shared_sources_are_fitted_once_per_split(events):
    split = splits.leave_last_out(events)
    catalogue = Vocab.from_ids(events["item_id"])
    counting = CountingFit(PopularityScorer())
    shared = SharedFit(counting)
    run_ml(split, shared, catalogue, ks=(10,))
    run_ml(split, BlendScorer({"p": shared}, 10), catalogue, ks=(10,))
    assert counting.fits == 1
    other = splits.leave_last_out(events.head(4000))
    run_ml(other, BlendScorer({"p": shared}, 10), catalogue, ks=(10,))
    assert counting.fits == 2


def test_blend_rows_hold_each_list_once_and_never_a_seen_item(events):
    split = splits.leave_last_out(events)
    catalogue = Vocab.from_ids(events["item_id"])
    blend = BlendScorer({"co": CoVisitScorer("user"), "pop": PopularityScorer()}, 20, exclude_seen=True)
    blend.fit(split.train, catalogue)
    from recemb.eval.queries import user_histories

    batch = next(iter(user_histories(split.train, catalogue, split.test["user_id"]).batches(64)))[2]
    scores = blend.score_queries(batch)
    listed = scores > 0
    assert (listed.sum(axis=1) == 21).all()  # k + 1 places, each item once
    for b in range(len(batch)):
        assert not listed[b, batch.query(b)].any()
        assert sorted(scores[b, listed[b]]) == list(np.arange(1, 22, dtype=np.float32))
