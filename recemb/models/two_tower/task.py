"""The retrieval task: in-batch softmax over tower outputs (the towers own no loss).

For B (user, positive item) pairs with unit-norm embeddings ``u [B, D]`` and
``v [B, D]`` and optional M extra uniformly sampled items ``n [M, D]``
(mixed negative sampling, Yang et al. 2020)::

    logits[i, j] = <u_i, c_j> / temperature - log q_j,   c = [v; n]   (B x (B + M))
    loss         = mean_i cross_entropy(logits[i], label = i)

- logQ (Yi et al. 2019): an item is a candidate of every row with the
  probability it is sampled into a batch, so popular items are over-punished
  as negatives. ``q_j`` is the expected number of times item j is among the
  candidates of one batch: the streaming estimate ``1 / delta_j`` of
  :class:`FrequencyEstimator` (delta = steps between its occurrences), plus
  ``M / N`` when M uniform negatives are drawn from N items.
- Accidental hits: a candidate with the same item id as row i's positive
  (the same item twice in a batch) is not a negative; its logit is masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrequencyEstimator(nn.Module):
    """Streaming sampling-probability estimate of Yi et al. 2019 (Algorithm 2), hashed.

    Per hash bucket h: ``A[h]`` = the last step the bucket was seen, ``B[h]``
    = a moving average of the steps between sightings. At step t, for each
    id in the batch: ``B[h] <- (1 - alpha) B[h] + alpha (t - A[h])``,
    ``A[h] <- t``. The estimate of "times per batch" is ``1 / B[h]``.
    State is kept in buffers so it is checkpointed with the task.
    """

    step: torch.Tensor  # [] int64
    last_seen: torch.Tensor  # [buckets] float64
    delta: torch.Tensor  # [buckets] float64

    def __init__(self, buckets: int = 1 << 16, alpha: float = 0.01):
        super().__init__()
        self.buckets, self.alpha = int(buckets), float(alpha)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last_seen", torch.zeros(self.buckets, dtype=torch.float64))
        # Start at one sighting per batch: new items begin as "frequent" and
        # decay towards their true rate (Yi et al. leave the initial value open).
        self.register_buffer("delta", torch.ones(self.buckets, dtype=torch.float64))

    def _hash(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.remainder(ids, self.buckets)

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """Record one batch of ``[B]`` item ids (duplicates count once per batch)."""
        self.step += 1
        h = torch.unique(self._hash(ids.to(self.last_seen.device)))
        t = self.step.to(torch.float64)
        self.delta[h] = (1 - self.alpha) * self.delta[h] + self.alpha * (t - self.last_seen[h])
        self.last_seen[h] = t

    @torch.no_grad()
    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B]`` float32 estimated times per batch of each id (at most 1)."""
        d = self.delta[self._hash(ids.to(self.delta.device))]
        return (1.0 / d.clamp(min=1.0)).to(torch.float32).to(ids.device)


class RetrievalTask(nn.Module):
    """In-batch softmax with temperature, logQ correction, accidental-hit removal, mixed negatives.

    Args:
        num_items: N, the catalogue size (uniform negatives are drawn from it).
        temperature: logits are cosine / temperature.
        logq: subtract ``log q`` of each candidate.
        remove_accidental_hits: mask candidates equal to the row's positive.
        mixed_negatives: M extra uniform negatives per batch (the caller
            samples them with :meth:`sample_negatives` and embeds them).
    """

    def __init__(
        self,
        num_items: int,
        temperature: float = 0.05,
        logq: bool = True,
        remove_accidental_hits: bool = True,
        mixed_negatives: int = 0,
        estimator_buckets: int = 1 << 16,
        estimator_alpha: float = 0.01,
    ):
        super().__init__()
        self.num_items = int(num_items)
        self.temperature = float(temperature)
        self.logq = bool(logq)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.mixed_negatives = int(mixed_negatives)
        self.estimator = FrequencyEstimator(estimator_buckets, estimator_alpha)

    def sample_negatives(self, generator: torch.Generator) -> torch.Tensor:
        """``[M]`` item indices drawn uniformly (with replacement)."""
        return torch.randint(0, self.num_items, (self.mixed_negatives,), generator=generator)

    def candidate_log_q(self, pos_ids: torch.Tensor, neg_ids: torch.Tensor | None) -> torch.Tensor:
        """``[B + M]`` log q of every candidate column; updates the streaming estimate first."""
        self.estimator.update(pos_ids)
        ids = pos_ids if neg_ids is None else torch.cat([pos_ids, neg_ids])
        q = self.estimator.probability(ids)
        if neg_ids is not None and len(neg_ids):
            q = q + len(neg_ids) / self.num_items
        return torch.log(q)

    def forward(
        self,
        user: torch.Tensor,
        pos: torch.Tensor,
        pos_ids: torch.Tensor,
        neg: torch.Tensor | None = None,
        neg_ids: torch.Tensor | None = None,
        log_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            user: ``[B, D]`` user embeddings.
            pos: ``[B, D]`` embeddings of each row's positive item.
            pos_ids: ``[B]`` item indices of the positives.
            neg, neg_ids: ``[M, D]`` / ``[M]`` extra negatives, or None.
            log_q: ``[B + M]`` log sampling probabilities to use instead of
                the streaming estimate (tests; fixed proposals).
        """
        cands = pos if neg is None else torch.cat([pos, neg])
        cand_ids = pos_ids if neg_ids is None else torch.cat([pos_ids, neg_ids])
        logits = user @ cands.T / self.temperature  # [B, B + M]
        if self.logq:
            if log_q is None:
                log_q = self.candidate_log_q(pos_ids, neg_ids)
            logits = logits - log_q.to(logits.dtype)[None, :]
        labels = torch.arange(len(user), device=user.device)
        if self.remove_accidental_hits:
            hit = pos_ids[:, None] == cand_ids[None, :]
            hit[labels, labels] = False
            logits = logits.masked_fill(hit, torch.finfo(logits.dtype).min)
        return F.cross_entropy(logits, labels)
