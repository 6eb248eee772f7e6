"""The sequence network: item windows -> hidden states -> next-item probabilities.

Shapes: ``B`` windows of ``L`` positions, ``D`` = ``config.dim``, ``N`` items.

- Input at position ``t``: item embedding + position embedding (+ gap
  embedding), through ``layers`` pre-LayerNorm causal self-attention blocks
  (SASRec, Kang & McAuley 2018): the state at ``t`` sees items ``0..t`` only.
- Explore path: ``p_explore = softmax(score(h_t, E))`` over the catalogue,
  with the *same* item embeddings ``E`` as the input (weight tying);
  ``score`` is cosine / temperature or the dot product.
- Repeat path (RepeatNet, Ren et al. 2019): attention of ``h_t`` over the
  states of its own history with a learned recency bias gives
  ``p_repeat(x) = sum of attention on the positions holding x``; a gate
  ``g = sigmoid(w . h_t)`` mixes ``p = g * p_repeat + (1 - g) * p_explore``.
  An item is often its own best next item (re-clicks): this is the path that
  lets the model rank it first without distorting the embedding space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.windows import PAD

LOG_EPS = 1e-9  # floor of a probability before its log (a repeat probability of 0 is common)


class CausalBlock(nn.Module):
    """Pre-LN self-attention + feed-forward; ``[B, L, D] -> [B, L, D]``, position t sees 0..t."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"sequence.dim={dim} must be a multiple of sequence.heads={heads}")
        self.heads, self.p = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ff(self.ln2(x)))


@dataclass(frozen=True)
class ItemCategories:
    """The items' categories in CSR layout, for ``item_categories``.

    Attributes:
        offsets: ``[N + 1]`` int64; item row r has categories ``values[offsets[r]:offsets[r + 1]]``.
        values: ``[C]`` int64 category indices.
        count: number of distinct categories.
        trained: items ``0..trained-1`` have events (their id row is learned); the rest are
            cold and get their vector from their categories alone.
    """

    offsets: np.ndarray
    values: np.ndarray
    count: int
    trained: int

    @classmethod
    def from_weights(cls, weights: dict[str, torch.Tensor]) -> ItemCategories:
        """The categories a saved network holds (its buffers), to rebuild it before loading the weights."""
        return cls(
            offsets=weights["category_offsets"][1:].numpy(),
            values=weights["category_values"].numpy(),
            count=int(weights["categories.weight"].shape[0]),
            trained=int(weights["id_mask"].sum()),
        )


class SequenceNet(nn.Module):
    """Causal Transformer over item windows with tied item embeddings and a repeat path.

    Args:
        n_items: catalogue size N (input ids are rows + 1; 0 is padding).
        config: the ``sequence:`` section.
        categories: with ``config.item_categories``: every item's categories; an item's
            vector (input and output alike) is its id row plus the mean of its category
            rows, and a cold item's is the category part alone.
        repeat: whether the repeat path is on, where ``config.repeat`` is ``"auto"``
            (:func:`recemb.models.sequence.fit.uses_repeat_path` decides from the data).
    """

    # buffers with item_categories (saved in the state dict with the weights)
    category_offsets: torch.Tensor  # [N + 2] int64: CSR offsets of input ids 0..N (0 = padding, empty)
    category_values: torch.Tensor  # [C] int64 category rows
    id_mask: torch.Tensor  # [N + 1] float32: 1 where the id row is learned (items with events)

    def __init__(
        self,
        n_items: int,
        config: SequenceConfig,
        categories: ItemCategories | None = None,
        repeat: bool | None = None,
    ):
        super().__init__()
        d = config.dim
        self.n_items, self.config = n_items, config
        self.repeat = config.repeat if isinstance(config.repeat, bool) else bool(repeat)
        self.items = nn.Embedding(n_items + 1, d, padding_idx=PAD)
        nn.init.normal_(self.items.weight, std=d**-0.5)
        with torch.no_grad():
            self.items.weight[PAD].zero_()
        self.categories: nn.Embedding | None = None
        if config.item_categories:
            if categories is None or len(categories.offsets) != n_items + 1:
                raise ValueError("sequence.item_categories: SequenceNet needs the categories of its N items")
            self.categories = nn.Embedding(max(categories.count, 1), d)
            nn.init.normal_(self.categories.weight, std=d**-0.5)
            # Row 0 (padding) is an empty bag; id rows of cold items are masked out.
            offsets = np.concatenate([[0], categories.offsets]).astype(np.int64)
            self.register_buffer("category_offsets", torch.from_numpy(offsets))
            self.register_buffer("category_values", torch.from_numpy(categories.values.astype(np.int64)))
            mask = (np.arange(n_items + 1) >= 1) & (np.arange(n_items + 1) <= categories.trained)
            self.register_buffer("id_mask", torch.from_numpy(mask.astype(np.float32)))
        # Positions from the window start (a query's last item has the position it had in training);
        # the GRU has none: the recurrence orders the items.
        self.positions = nn.Embedding(config.max_length, d) if config.encoder == "transformer" else None
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=0.02)
        self.gaps = nn.Embedding(config.gap_buckets, d) if config.time_gaps else None
        if self.gaps is not None:
            nn.init.normal_(self.gaps.weight, std=0.02)
        self.query_gaps = nn.Embedding(config.gap_buckets, d, padding_idx=0) if config.query_gap else None
        if self.query_gaps is not None:  # bucket 0 (unknown) adds nothing
            nn.init.normal_(self.query_gaps.weight, std=0.02)
            with torch.no_grad():
                self.query_gaps.weight[0].zero_()
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList()
        self.gru: nn.GRU | None = None
        if config.encoder == "gru":  # recurrent, hence causal; positions are implicit in the recurrence
            self.gru = nn.GRU(
                d, d, config.layers, batch_first=True, dropout=config.dropout if config.layers > 1 else 0.0
            )
        else:
            self.blocks.extend(CausalBlock(d, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(d)
        if self.repeat:
            self.repeat_query = nn.Linear(d, d)
            self.repeat_key = nn.Linear(d, d)
            self.recency = nn.Embedding(config.max_length, 1)  # bias by distance t - j
            nn.init.zeros_(self.recency.weight)
            self.gate = nn.Linear(d, 1)

    # ------------------------------------------------------------ states
    def item_table(self) -> torch.Tensor:
        """``[N + 1, D]`` every input id's vector (row 0: padding): the id table, plus categories when on."""
        if self.categories is None:
            return self.items.weight
        bags = F.embedding_bag(
            self.category_values, self.categories.weight, self.category_offsets, mode="mean", include_last_offset=True
        )
        return self.items.weight * self.id_mask[:, None] + bags

    def hidden(self, inputs: torch.Tensor, gaps: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, D]`` states from ``inputs`` / ``gaps`` ``[B, L]`` int64 (right-padded).

        ``table``: :meth:`item_table`, when the caller has it already.
        """
        length = inputs.shape[1]
        x = F.embedding(inputs, self.item_table() if table is None else table)
        if self.positions is not None:
            x = x + self.positions.weight[:length]
        if self.gaps is not None:
            x = x + self.gaps(gaps)
        x = self.drop(x)
        if self.gru is not None:
            x = self.gru(x)[0]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def readout(self, h: torch.Tensor, query_gaps: torch.Tensor | None) -> torch.Tensor:
        """States ``[..., D]`` as queries: plus the query-gap embedding (``query_gaps`` ``h.shape[:-1]``).

        Added after the causal blocks, so a position's query gap reaches its own prediction only.
        """
        if self.query_gaps is None or query_gaps is None:
            return h
        return h + self.query_gaps(query_gaps)

    def query(self, h: torch.Tensor) -> torch.Tensor:
        """The query vector of states ``[..., D]`` (unit-norm under cosine)."""
        return F.normalize(h, dim=-1) if self.config.scoring == "cosine" else h

    def item_matrix(self, table: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, D]`` output item vectors: the input table without its padding row (unit-norm under cosine)."""
        return self.query((self.item_table() if table is None else table)[1:])

    def scale(self) -> float:
        """Logit scale: 1 / temperature under cosine, 1 for the dot product."""
        return 1.0 / self.config.temperature if self.config.scoring == "cosine" else 1.0

    # ------------------------------------------------------------ repeat path
    def repeat_attention(self, h: torch.Tensor, inputs: torch.Tensor, hq: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, L]`` attention of each position t over its history j <= t (rows sum to 1 where valid).

        ``hq``: the query-side states (:meth:`readout`; default ``h``); keys are always ``h``.
        """
        length = inputs.shape[1]
        q, k = self.repeat_query(h if hq is None else hq), self.repeat_key(h)
        logits = q @ k.transpose(1, 2) / math.sqrt(h.shape[-1])
        pos = torch.arange(length, device=h.device)
        distance = (pos[:, None] - pos[None, :]).clamp(0, self.config.max_length - 1)
        logits = logits + self.recency(distance).squeeze(-1)
        allowed = (pos[None, :] <= pos[:, None])[None] & (inputs != PAD)[:, None, :]
        return logits.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)

    def log_gate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log g, log(1 - g))`` of the repeat gate, each ``h.shape[:-1]``."""
        z = self.gate(h).squeeze(-1)
        return F.logsigmoid(z), F.logsigmoid(-z)

    # ------------------------------------------------------------ training
    def forward(
        self,
        inputs: torch.Tensor,
        gaps: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None = None,
        query_gaps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training forward (what DistributedDataParallel wraps): :meth:`log_likelihood`."""
        return self.log_likelihood(inputs, gaps, targets, negatives, query_gaps)

    def log_likelihood(
        self,
        inputs: torch.Tensor,
        gaps: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None = None,
        query_gaps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[P]`` log p(target) at every position with a target (``targets >= 0``), in row-major order.

        ``negatives`` ``[K]`` item rows: a sampled softmax (the target against them,
        accidental hits removed) instead of the full one. ``query_gaps`` ``[B, L]``:
        each position's gap bucket to its target (0 = unknown).
        """
        table = self.item_table()
        h = self.hidden(inputs, gaps, table)
        hq = self.readout(h, query_gaps)
        valid = targets >= 0
        hv, y = hq[valid], targets[valid]
        q = self.query(hv)
        if negatives is None:
            logits = q @ self.item_matrix(table).T * self.scale()
            log_explore = logits.log_softmax(-1).gather(1, y[:, None]).squeeze(1)
        else:
            pos = (q * self.query(table[y + 1])).sum(-1, keepdim=True) * self.scale()
            neg = q @ self.query(table[negatives + 1]).T * self.scale()
            neg = neg.masked_fill(negatives[None, :] == y[:, None], float("-inf"))
            log_explore = pos.squeeze(1) - torch.cat([pos, neg], dim=1).logsumexp(-1)
        if not self.repeat:
            return log_explore
        attention = self.repeat_attention(h, inputs, hq)  # [B, L, L]
        same = (inputs - 1)[:, None, :] == targets[:, :, None]  # key j holds query t's target
        p_repeat = (attention * same).sum(-1)[valid]
        log_g, log_not_g = self.log_gate(hv)
        return torch.logaddexp(log_g + p_repeat.clamp_min(LOG_EPS).log(), log_not_g + log_explore)

    # ------------------------------------------------------------ inference
    def last_states(
        self, inputs: torch.Tensor, gaps: torch.Tensor, lengths: torch.Tensor, query_gaps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, D]`` query state at each window's last item (zeros for an empty window)."""
        h = self.hidden(inputs, gaps)
        last = self.readout(h[torch.arange(len(inputs), device=h.device), (lengths - 1).clamp_min(0)], query_gaps)
        return last * (lengths > 0)[:, None]

    def scores(
        self, inputs: torch.Tensor, gaps: torch.Tensor, lengths: torch.Tensor, query_gaps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, N]`` next-item scores: p(x) with the repeat path, the explore logits without it.

        ``query_gaps`` ``[B]``: gap bucket from each history's last item to the query (0 = unknown).
        """
        table = self.item_table()
        h = self.hidden(inputs, gaps, table)
        rows = torch.arange(len(inputs), device=h.device)
        last = (lengths - 1).clamp_min(0)
        h_last = self.readout(h[rows, last], query_gaps)
        logits = self.query(h_last) @ self.item_matrix(table).T * self.scale()
        if not self.repeat:
            return logits
        hq = h.clone()
        hq[rows, last] = h_last
        attention = self.repeat_attention(h, inputs, hq)[rows, last]  # [B, L]
        p_repeat = torch.zeros_like(logits).scatter_add_(1, (inputs - 1).clamp_min(0), attention)
        log_g, log_not_g = self.log_gate(h_last)
        return log_g.exp()[:, None] * p_repeat + log_not_g.exp()[:, None] * logits.softmax(-1)
