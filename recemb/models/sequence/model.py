"""``SequenceModel``: a causal Transformer user tower trained on every position of every session.

    model = SequenceModel(SequenceConfig()).fit(events)
    model.item_embeddings()                 # EmbeddingSet [N, D]: the tied item table (cosine)
    model.encode([["i1", "i7"], ["i3"]])    # [2, D] query vectors: the state at the last item
    model.score_histories(rows, offsets)    # [B, N] next-item probabilities, repeat path included
    model.save("out/sequence"); SequenceModel.load("out/sequence")

The query vectors and item vectors serve the explore path from an index
(angular under cosine); the repeat path needs the history's own states, so
the full score comes from :meth:`score_histories`, which the evaluation and
the online service use (recemb.eval.model_scorer, serving/).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pydantic
import torch

from recemb.data.vocab import Vocab
from recemb.embeddings import EmbeddingSet
from recemb.errors import RecembError
from recemb.io import atomic_dir, write_json
from recemb.models.protocol import EmbeddingModel, EpochHook, _checked_csr, epoch_observer
from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.net import ItemCategories, SequenceNet
from recemb.models.sequence.windows import history_gaps, query_gaps, query_windows

WEIGHTS_FILE = "weights.pt"
QUERY_BATCH = 1024  # histories per forward pass when scoring


class SequenceModel(EmbeddingModel):
    """The ``sequence`` registry model (module docstring).

    Contract (recemb.models.protocol): id-only by default, so items without
    events get no vector (``covers_unseen_items`` False); with
    ``item_categories`` the items table's categories join every item vector and
    cold items get theirs from their categories. Queries come from the network,
    not from pooling (``pooled_query`` False), and :meth:`score_histories`
    adds the repeat path on top of the query-item scores.
    """

    name = "sequence"
    pooled_query = False
    covers_unseen_items = False
    own_scores = True

    def __init__(self, config: SequenceConfig | None = None):
        self.config = config or SequenceConfig()
        self.covers_unseen_items = self.config.item_categories
        self.vocab: Vocab | None = None
        self.net: SequenceNet | None = None
        self.history: list[dict[str, Any]] = []

    def fit(
        self,
        events: pl.DataFrame,
        *,
        items: pl.DataFrame | None = None,
        users: pl.DataFrame | None = None,
        catalogue: Vocab | None = None,
        root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        on_epoch: EpochHook | None = None,
    ) -> SequenceModel:
        """Train on canonical ``events`` (sessions, or users' histories without session ids).

        ``items`` is read with ``item_categories`` (its ``category`` lists), the
        other side tables are ignored; ``catalogue`` limits the items. ``checkpoint_dir``: write
        ``checkpoint_epoch_NNNN/`` there after each epoch and resume from the newest.
        ``on_epoch``: the contract's hook, ``on_epoch(epoch, model so far)`` after each epoch.
        """
        from recemb.models.sequence.fit import fit_sequence, training_data
        from recemb.train.checkpoints import LocalCheckpoints
        from recemb.train.runner import WorkerContext

        ctx = WorkerContext(
            checkpoints=LocalCheckpoints(Path(checkpoint_dir)) if checkpoint_dir else None,
            on_epoch=epoch_observer(on_epoch, lambda state: SequenceModel.from_trained(self.config, *state)),
        )
        data = training_data(self.config, events, catalogue, items)
        self.vocab, self.net, self.history = fit_sequence(self.config, data, ctx)
        return self

    @classmethod
    def from_trained(
        cls, config: SequenceConfig, vocab: Vocab, net: SequenceNet, history: list[dict[str, Any]]
    ) -> SequenceModel:
        """A fitted model sharing a network in training (a per-epoch snapshot; scoring sets eval mode)."""
        model = cls(config)
        model.vocab, model.net, model.history = vocab, net, list(history)
        return model

    @classmethod
    def from_state(
        cls, config: SequenceConfig, vocab: Vocab, weights: dict[str, torch.Tensor], history: list[dict[str, Any]]
    ) -> SequenceModel:
        """A fitted model from a network state dict (a checkpoint's or a saved model's)."""
        model = cls(config)
        try:
            categories = ItemCategories.from_weights(weights) if config.item_categories else None
            net = SequenceNet(len(vocab), config, categories, repeat="gate.weight" in weights)
            net.load_state_dict(weights)
        except (RuntimeError, KeyError, ValueError) as e:
            raise RecembError(f"sequence model: weights do not fit {len(vocab)} items and its settings ({e})") from None
        model.vocab, model.net, model.history = vocab, net.eval(), list(history)
        return model

    @property
    def is_fitted(self) -> bool:
        return self.net is not None and self.vocab is not None

    def _fitted(self) -> tuple[Vocab, SequenceNet]:
        if self.vocab is None or self.net is None:
            raise self.not_fitted_error()
        return self.vocab, self.net

    # ---------------------------------------------------------------- outputs
    def item_vocab(self) -> Vocab:
        return self._fitted()[0]

    def item_embeddings(self) -> EmbeddingSet:
        """``[N, D]`` the tied item table (unit rows under cosine), every item with events."""
        vocab, net = self._fitted()
        with torch.no_grad():
            vectors = net.item_matrix().float().cpu().numpy()
        last = self.history[-1] if self.history else {}
        return EmbeddingSet(
            vocab.ids,
            vectors,
            kind="sequence",
            metric=self.config.scoring,
            normalized=self.config.scoring == "cosine",
            config=self.config.model_dump(mode="json"),
            metrics={"final_loss": last.get("loss"), "loss_per_epoch": [h["loss"] for h in self.history]},
        )

    def _batches(self, items: np.ndarray, offsets: np.ndarray, ts: np.ndarray | None, at: np.ndarray | None):
        """Yield ``(start, stop, inputs, gaps, lengths, query_gaps)`` tensors of at most QUERY_BATCH histories."""
        vocab, net = self._fitted()
        items, offsets = _checked_csr(items, offsets, len(vocab))
        if ts is not None and len(ts) != len(items):
            raise RecembError(f"sequence model: ts has {len(ts)} times for {len(items)} history items")
        if at is not None and len(at) != len(offsets) - 1:
            raise RecembError(f"sequence model: at has {len(at)} query times for {len(offsets) - 1} histories")
        gaps = history_gaps(ts, offsets, self.config.gap_buckets) if ts is not None else None
        last_gaps = query_gaps(ts, offsets, at, self.config.gap_buckets)
        if len(items) and items.min() < 0:  # rows without a vector: dropped, as the contract says
            owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
            keep = items >= 0
            lengths = np.bincount(owner[keep], minlength=len(offsets) - 1)
            items, offsets = items[keep], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            gaps = gaps[keep] if gaps is not None else None
        device = next(net.parameters()).device
        for start in range(0, len(offsets) - 1, QUERY_BATCH):
            stop = min(start + QUERY_BATCH, len(offsets) - 1)
            sub = offsets[start : stop + 1]
            part = gaps[sub[0] : sub[-1]] if gaps is not None else None
            window = query_windows(items[sub[0] : sub[-1]], sub - sub[0], self.config.max_length, part)
            yield start, stop, *(torch.from_numpy(a).to(device) for a in (*window, last_gaps[start:stop]))

    def encode_histories(
        self,
        items: np.ndarray,
        offsets: np.ndarray,
        user_ids: np.ndarray | None = None,
        *,
        ts: np.ndarray | None = None,
        at: np.ndarray | None = None,
        **pooling: Any,
    ) -> np.ndarray:
        """``[B, D]`` query vectors (unit-norm under cosine) from CSR histories of item rows.

        ``ts`` ``[T]``: the items' event times in seconds (their gaps feed the
        network); ``at`` ``[B]``: each query's time (with ``ts``: the gap since the
        last item); None = unknown. Empty histories give zeros; the pooling
        keywords do not apply.
        """
        _, net = self._fitted()
        out = np.zeros((len(offsets) - 1, self.config.dim), dtype=np.float32)
        net.eval()
        with torch.no_grad():
            for start, stop, inputs, g, lengths, qg in self._batches(items, offsets, ts, at):
                q = net.query(net.last_states(inputs, g, lengths, qg))
                out[start:stop] = (q * (lengths > 0)[:, None]).cpu().numpy()
        return out

    def score_histories(
        self,
        items: np.ndarray,
        offsets: np.ndarray,
        user_ids: np.ndarray | None = None,
        *,
        ts: np.ndarray | None = None,
        at: np.ndarray | None = None,
    ) -> np.ndarray:
        """``[B, N]`` float32 next-item scores over the rows of :meth:`item_embeddings`.

        ``ts``, ``at`` as in :meth:`encode_histories`.

        With the repeat path: ``p(x) = g * p_repeat(x) + (1 - g) * p_explore(x)``;
        without it, the explore logits. An empty history scores all zeros.
        """
        vocab, net = self._fitted()
        out = np.zeros((len(offsets) - 1, len(vocab)), dtype=np.float32)
        net.eval()
        with torch.no_grad():
            for start, stop, inputs, g, lengths, qg in self._batches(items, offsets, ts, at):
                s = net.scores(inputs, g, lengths, qg) * (lengths > 0)[:, None]
                out[start:stop] = s.float().cpu().numpy()
        return out

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``weights.pt`` (tensors only), ``items.parquet``, ``embeddings/`` and ``model.json``."""
        vocab, net = self._fitted()
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp / WEIGHTS_FILE)
            vocab.save(tmp / "items.parquet")
            self.item_embeddings().save(tmp / "embeddings")
            write_json(tmp / "model.json", self.model_meta(history=self.history))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SequenceModel:
        """A SequenceModel from :meth:`save`'s directory (``torch.load(weights_only=True)``)."""
        meta = cls.read_meta(directory)
        directory = Path(directory)
        for name in (WEIGHTS_FILE, "items.parquet"):
            if not (directory / name).is_file():
                raise RecembError(f"{directory / name}: missing; save the model again")
        try:
            config = SequenceConfig.model_validate(meta["config"])
        except pydantic.ValidationError as e:
            raise RecembError(
                f"{directory / 'model.json'}: its sequence settings do not fit this recemb "
                f"(first error: {e.errors()[0]['msg']}); retrain it"
            ) from None
        weights = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        return cls.from_state(config, Vocab.load(directory / "items.parquet"), weights, meta.get("history") or [])


def load_sequence_tower(directory: str | os.PathLike) -> SequenceModel:
    """The online service's loader (serving/user_tower.py): a saved model, ``encode(histories) -> [B, D]``."""
    return SequenceModel.load(directory)
