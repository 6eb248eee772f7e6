"""Contract tests every registered model inherits (recemb.models.protocol).

A model's test class subclasses :class:`ModelContract` and provides
``make_model()`` (a fresh, small, seeded model) and, where it needs them,
``side(data)`` (the side tables ``fit`` reads). The data is a tiny
two-community world: users of community A click items ``a0..a9``, users of B
click ``b0..b9``, plus one catalogue item ``cold`` that no event touches.

    class TestItem2VecContract(ModelContract):
        def make_model(self):
            return Item2Vec(Item2VecConfig(dim=8, epochs=3, threads=1))
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recemb.data.schema import coerce
from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError, NotFittedError
from recemb.models.protocol import EmbeddingModel

COLD = "cold"


def community_events(users_per_side: int = 30, clicks: int = 8, seed: int = 0) -> pl.DataFrame:
    """Canonical events: each user clicks ``clicks`` items of their own community, one session each."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for side in ("a", "b"):
        for u in range(users_per_side):
            for j, item in enumerate(rng.choice(10, size=clicks)):
                rows.append((f"{side}u{u}", f"{side}{item}", t0 + timedelta(minutes=u * 100 + j), f"{side}s{u}"))
    frame = pl.DataFrame(rows, schema=["user_id", "item_id", "ts", "session_id"], orient="row")
    return coerce(frame.with_columns(event=pl.lit("click"), weight=pl.lit(1.0)), "events")


def community_items() -> pl.DataFrame:
    """Items table: the community is in the title, text and category (content models read it)."""
    ids = [f"{s}{i}" for s in "ab" for i in range(10)] + [COLD]
    words = {"a": "apple orchard fruit", "b": "bicycle road wheel"}
    return pl.DataFrame(
        {
            "item_id": ids,
            "title": [f"{words[i[0]] if i != COLD else words['a']} {i}" for i in ids],
            "text": [words[i[0]] if i != COLD else words["a"] for i in ids],
            "category": [[i[0]] if i != COLD else ["a"] for i in ids],
            "image_path": [None] * len(ids),
        },
        schema_overrides={"image_path": pl.String},
    )


class ModelContract:
    """Shared tests (module docstring). Subclasses implement :meth:`make_model`."""

    #: the registry name of the model under test
    model_name: str = ""
    #: absolute tolerance of the seed-determinism check (Hogwild or sparse optimisers may differ in the last bits)
    determinism_atol: float = 1e-6

    def make_model(self) -> EmbeddingModel:
        raise NotImplementedError

    def side(self) -> dict:
        """Side inputs of ``fit`` (items table etc.) beside the events."""
        return {"items": community_items()}

    # ---------------------------------------------------------------- fixtures
    @pytest.fixture(scope="class")
    def events(self) -> pl.DataFrame:
        return community_events()

    @pytest.fixture(scope="class")
    def catalogue(self, events) -> Vocab:
        return Vocab.from_ids(pl.concat([events["item_id"], pl.Series([COLD])]))

    @pytest.fixture(scope="class")
    def fitted(self, events, catalogue) -> EmbeddingModel:
        return self.make_model().fit(events, catalogue=catalogue, **self.side())

    # ---------------------------------------------------------------- the contract
    def test_is_a_registered_kind_of_model(self):
        model = self.make_model()
        assert isinstance(model, EmbeddingModel)
        assert isinstance(model.name, str) and model.name
        assert not model.is_fitted

    def test_outputs_need_a_fit(self):
        model = self.make_model()
        with pytest.raises(NotFittedError):
            model.item_embeddings()
        with pytest.raises(NotFittedError):
            model.encode([["a1"]])
        with pytest.raises(NotFittedError):
            model.save("never-written")

    def test_empty_events_are_refused(self, events):
        with pytest.raises(DataValidationError):
            self.make_model().fit(events.head(0), **self.side())

    def test_item_embeddings_shapes_and_dtypes(self, fitted):
        es = fitted.item_embeddings()
        assert es.vectors.dtype == np.float32 and es.vectors.ndim == 2
        assert es.vectors.shape == (len(es.ids), es.dim) and es.dim > 0
        assert np.isfinite(es.vectors).all()
        assert all(isinstance(i, str) for i in es.ids)
        warm = {f"{s}{i}" for s in "ab" for i in range(10)}
        assert warm <= set(es.ids.tolist()), "every item with events has a vector"

    def test_unseen_items_follow_covers_unseen_items(self, fitted):
        assert (COLD in set(fitted.item_embeddings().ids.tolist())) == fitted.covers_unseen_items

    def test_encode_shapes_and_unknown_ids(self, fitted):
        dim = fitted.item_embeddings().dim
        q = fitted.encode([["a1", "a2"], ["b3"], [], ["no-such-item"], ["a1", "no-such-item", "a2"]])
        assert q.shape == (5, dim) and q.dtype == np.float32
        assert np.isfinite(q).all()
        # A history without a known item is the zero vector; unknown ids are skipped.
        np.testing.assert_array_equal(q[2], 0.0)
        np.testing.assert_array_equal(q[3], 0.0)
        np.testing.assert_allclose(q[4], q[0], atol=1e-6)
        assert np.abs(q[0]).sum() > 0

    def test_encode_histories_matches_encode(self, fitted):
        vocab = fitted.item_embeddings().to_vocab()
        rows = vocab.lookup(pl.Series(["a1", "a2", "b3"]))
        q = fitted.encode_histories(rows, np.array([0, 2, 3]))
        np.testing.assert_allclose(q, fitted.encode([["a1", "a2"], ["b3"]]), atol=1e-6)

    def test_on_epoch_sees_the_model_so_far(self, events, catalogue, fitted):
        """``fit(on_epoch=hook)``: 1-based, increasing epochs, each with a fitted model; the last one
        scores like the returned model (what a tuning trial reports is what the fit gives)."""
        seen: list[tuple[int, np.ndarray]] = []

        def hook(epoch: int, model: EmbeddingModel) -> None:
            assert model.is_fitted
            seen.append((epoch, model.encode([["a1", "a2"], ["b3"]])))

        model = self.make_model().fit(events, catalogue=catalogue, on_epoch=hook, **self.side())
        epochs = [e for e, _ in seen]
        assert epochs and epochs[0] == 1 and epochs == sorted(set(epochs))
        np.testing.assert_allclose(seen[-1][1], model.encode([["a1", "a2"], ["b3"]]), atol=1e-5)
        # The hook changes nothing about training: same seed, same vectors as a fit without it.
        np.testing.assert_allclose(
            model.item_embeddings().vectors, fitted.item_embeddings().vectors, atol=self.determinism_atol
        )

    def test_queries_find_their_community(self, fitted):
        """A history of community A scores A's items above B's (the model learned something)."""
        es = fitted.item_embeddings()
        vectors = es.vectors / np.maximum(np.linalg.norm(es.vectors, axis=1, keepdims=True), 1e-12)
        q = fitted.encode([["a1", "a2", "a3"], ["b1", "b2", "b3"]])
        scores = q @ vectors.T
        ids = es.ids.tolist()
        side_a = np.array([i.startswith("a") for i in ids])
        side_b = np.array([i.startswith("b") for i in ids])
        assert scores[0, side_a].mean() > scores[0, side_b].mean()
        assert scores[1, side_b].mean() > scores[1, side_a].mean()

    def test_score_histories_rank_the_catalogue(self, fitted):
        """``score_histories`` gives ``[B, N]`` finite scores over the item rows that favour the history's side."""
        es = fitted.item_embeddings()
        vocab = es.to_vocab()
        rows = vocab.lookup(pl.Series(["a1", "a2", "a3", "b1", "b2", "b3"]))
        scores = fitted.score_histories(rows, np.array([0, 3, 6]))
        assert scores.shape == (2, len(es)) and scores.dtype == np.float32 and np.isfinite(scores).all()
        side_a = np.array([i.startswith("a") for i in es.ids.tolist()])
        side_b = np.array([i.startswith("b") for i in es.ids.tolist()])
        assert scores[0, side_a].mean() > scores[0, side_b].mean()
        assert scores[1, side_b].mean() > scores[1, side_a].mean()

    def test_same_seed_same_vectors(self, fitted, events, catalogue):
        again = self.make_model().fit(events, catalogue=catalogue, **self.side())
        a, b = fitted.item_embeddings(), again.item_embeddings()
        assert a.ids.tolist() == b.ids.tolist()
        np.testing.assert_allclose(a.vectors, b.vectors, atol=self.determinism_atol)

    def test_save_load_round_trip(self, fitted, tmp_path):
        out = fitted.save(tmp_path / "model")
        loaded = type(fitted).load(out)
        assert loaded.is_fitted
        a, b = fitted.item_embeddings(), loaded.item_embeddings()
        assert a.ids.tolist() == b.ids.tolist()
        np.testing.assert_array_equal(a.vectors, b.vectors)
        histories = [["a1", "a2"], ["b3", "b4", "b5"], []]
        np.testing.assert_allclose(loaded.encode(histories), fitted.encode(histories), atol=1e-6)
        rows = a.to_vocab().lookup(pl.Series(["a1", "a2", "b3"]))
        np.testing.assert_allclose(
            loaded.score_histories(rows, np.array([0, 2, 3])),
            fitted.score_histories(rows, np.array([0, 2, 3])),
            atol=1e-5,
        )

    def test_load_refuses_what_it_did_not_save(self, tmp_path):
        from recemb.errors import RecembError

        with pytest.raises(RecembError, match="not a saved recemb model"):
            type(self.make_model()).load(tmp_path)
        (tmp_path / "model.json").write_text('{"format": 1, "model": "some-other-model"}')
        with pytest.raises(RecembError, match="some-other-model"):
            type(self.make_model()).load(tmp_path)
