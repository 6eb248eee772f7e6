"""P-COLD scorer: item2vec for warm items, aligned content vectors for cold ones.

:class:`ContentScorer` is fitted like every scorer on the split's train
events only: it trains item2vec on them, aligns a content encoder
(recemb.models.content.align) on the train items that got a vector, and
encodes every catalogue item from its content alone. The query is the
user's history as for item2vec (``eval.query``); the item space is one of:

- ``items_space="content"`` (default): query and items both from content
  vectors, so warm and cold items compete on equal terms.
- ``"aligned"``: the query from the history's item2vec vectors, every
  item scored by its content vector.
- ``"hybrid"``: warm items keep their item2vec vectors, cold ones get
  content vectors. A fitted content vector is less similar to any query
  than the warm items' own vectors, so warm items nearly always win.

Measured P-COLD Recall@20 (content = text + categories; CPU; see the issue
#7 note): synthetic 400 items content 0.52 / aligned 0.31 / hybrid 0.00 /
random 0.05; ML-100K (70 cold targets) content 0.057 / aligned 0.014 /
popularity 0.000.

``random=True`` replaces the content vectors by seeded random unit vectors:
the control row that any content signal must beat.

The items table is not part of the Scorer protocol (``fit`` sees events
only), so it is given to the constructor; :func:`content_scorers` builds the
configured variants from a dataset for ``recemb.eval.evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet, l2_normalize
from recemb.errors import ConfigError, DataValidationError, RecembError
from recemb.eval.embedding_scorer import _CatalogueMatrix, query_vectors, query_weights
from recemb.eval.scorers import QueryBatch
from recemb.models.content.config import ContentConfig
from recemb.models.item2vec.config import Item2VecConfig

# variant name -> which parts are on (None = the content config as given; "random" = control).
VARIANTS: dict[str, dict[str, bool] | None] = {
    "content": None,
    "content-text": {"text": True, "category": True, "image": False},
    "content-image": {"text": False, "category": False, "image": True},
    "content-both": {"text": True, "category": True, "image": True},
    "content-random": None,
}


class ContentScorer:
    """Item2vec + content alignment fitted on the train events (module doc).

    Args:
        content: the ``content:`` section (which parts, encoder, training).
        item2vec: the ``item2vec:`` section used for the behavioural vectors.
        items: canonical items table (``item_id``, text fields, ``category``, ``image_path``).
        root: directory ``image_path`` is relative to (the prepared dataset).
        unit: item2vec "sentences": ``"user"`` histories or ``"session"`` ids.
        items_space: ``"aligned"``, ``"content"`` or ``"hybrid"`` (module doc).
        random: score cold items with random vectors instead (control row).
        query, last_n, scoring: as :class:`EmbeddingScorer`.
        cache_dir: where frozen image / sentence features are cached.
    """

    def __init__(
        self,
        content: ContentConfig,
        item2vec: Item2VecConfig,
        items: pl.DataFrame,
        root: str | Path | None = None,
        unit: Literal["user", "session"] = "user",
        items_space: Literal["aligned", "content", "hybrid"] = "content",
        random: bool = False,
        query: str = "mean_last_n",
        last_n: int = 5,
        scoring: str = "cosine",
        cache_dir: str | Path | None = None,
        name: str = "content",
    ):
        if items_space not in ("aligned", "content", "hybrid"):
            raise ConfigError(
                f"ContentScorer: items_space must be 'aligned', 'content' or 'hybrid', got {items_space!r}"
            )
        if unit not in ("user", "session"):
            raise ConfigError(f"ContentScorer: unit must be 'user' or 'session', got {unit!r}")
        if items is None or items.height == 0:
            raise DataValidationError("ContentScorer: the dataset has no items table; content needs items.parquet")
        self.content, self.item2vec, self.items, self.root = content, item2vec, items, root
        self.unit, self.items_space, self.random = unit, items_space, random
        self.query, self.last_n, self.scoring, self.name = query, last_n, scoring, name
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.info: dict = {}
        self._queries: _CatalogueMatrix | None = None
        self._keys: _CatalogueMatrix | None = None

    def fit(self, train: pl.DataFrame, catalogue: Vocab) -> ContentScorer:
        from recemb.models.item2vec import Item2Vec
        from recemb.train.content import content_embeddings

        events = train.with_columns(session_id=pl.col("user_id")) if self.unit == "user" else train
        behaviour = Item2Vec(self.item2vec).fit(events).embeddings()
        cat_ids = pl.Series("item_id", catalogue.ids.tolist(), dtype=pl.String)
        items = self.items.filter(pl.col("item_id").is_in(cat_ids.implode()))
        if self.random:
            rng = np.random.default_rng(self.content.seed)
            ids = items["item_id"].to_list()
            vectors = l2_normalize(rng.standard_normal((len(ids), behaviour.dim)).astype(np.float32))
            content = EmbeddingSet(ids, vectors, kind="content-random", normalized=True)
            self.info = {"random": True}
        else:
            content, _, self.info = content_embeddings(items, self.root, behaviour, self.content, self.cache_dir)
        if self.items_space == "hybrid":
            query_side = key_side = self._hybrid(behaviour, content)
        else:
            key_side = content
            query_side = behaviour if self.items_space == "aligned" else content
        where = f"ContentScorer {self.name!r}"
        self._queries = _CatalogueMatrix(query_side, catalogue, self.scoring, where)
        self._keys = _CatalogueMatrix(key_side, catalogue, self.scoring, where)
        return self

    @staticmethod
    def _hybrid(behaviour: EmbeddingSet, content: EmbeddingSet) -> EmbeddingSet:
        # Warm items keep their behavioural rows (also those the items table lacks); the rest get content.
        keep_content = behaviour.to_vocab().lookup(pl.Series(content.ids.tolist(), dtype=pl.String)) < 0
        ids = np.concatenate([behaviour.ids, content.ids[keep_content]])
        vectors = np.concatenate([l2_normalize(np.asarray(behaviour.vectors)), content.vectors[keep_content]])
        return EmbeddingSet(ids, vectors, kind="content-hybrid", metric="cosine")

    def score_queries(self, queries: QueryBatch) -> np.ndarray:
        """``[B, N]`` float32 scores of every catalogue item."""
        if self._keys is None:
            raise RecembError(f"ContentScorer {self.name!r}: call fit(train, catalogue) before score_queries")
        w = query_weights(queries, self._queries.known, self.query, self.last_n)
        q = query_vectors(self._queries.matrix, queries, w)
        if self.scoring == "cosine":
            q = l2_normalize(q)
        return self._keys.score(q)


def content_scorers(
    content: ContentConfig,
    item2vec: Item2VecConfig,
    items: pl.DataFrame | None,
    root: str | Path | None,
    protocol: str,
    variants: Sequence[str] = ("content",),
    query: str = "mean_last_n",
    last_n: int = 5,
    scoring: str = "cosine",
    cache_dir: str | Path | None = None,
) -> dict[str, ContentScorer]:
    """The content scorers named in ``variants`` (keys of :data:`VARIANTS`), set up for ``protocol``.

    ``content-text`` / ``-image`` / ``-both`` switch parts on and off over
    ``content``; ``content-random`` is the random-vector control.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown content scorer(s) {unknown}; choose from {list(VARIANTS)}")
    unit = "session" if protocol == "sess" else "user"
    out = {}
    for v in variants:
        parts = VARIANTS[v]
        cfg = content.model_copy(update=parts) if parts else content
        out[v] = ContentScorer(
            cfg,
            item2vec,
            items,
            root,
            unit,
            random=(v == "content-random"),
            query=query,
            last_n=last_n,
            scoring=scoring,
            cache_dir=cache_dir,
            name=v,
        )
    return out
