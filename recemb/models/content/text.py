"""fastText-style hashed text features and the text encoder (DESIGN.md §3).

Tokens of a text (:func:`tokenize`), for any script:

- words: maximal runs of letters/digits, NFC-normalised and lower-cased
  (``"Café"`` -> ``"café"``; accents are kept, so ``"é"`` and ``"e"`` differ,
  while a decomposed ``"e\\u0301"`` equals the composed ``"é"``);
- CJK: every Han / kana / Hangul character is a token of its own, plus each
  pair of adjacent characters (Chinese has no spaces; bigrams carry most
  two-character words);
- character n-grams (``min_n..max_n``, default 3-6) of every non-CJK word
  wrapped in boundary markers, ``"<cat>"`` -> ``<ca, cat, at>, <cat, ...``,
  so rare words and typos share sub-word buckets (Bojanowski et al. 2017).

Each token is prefixed with its kind (``w:`` word, ``g:`` n-gram, ``z:`` CJK)
and hashed with CRC-32 into ``buckets`` rows: stable across processes and
machines (Python's ``hash()`` is salted per process). A batch of texts is
encoded as CSR ``(ids [T] int64, offsets [B + 1] int64)`` — the layout of
``nn.EmbeddingBag`` and of a one-key torchrec ``KeyedJaggedTensor``.

:class:`TextEncoder` maps a batch to ``[B, D]``: mean-pooled bucket vectors
(plain ``nn.EmbeddingBag`` or torchrec's ``EmbeddingBagCollection``), then an
optional MLP. torchrec is imported only when its backend is asked for
(``import torchrec`` costs ~5 s).
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from recemb.errors import ConfigError
from recemb.models.device import resolve_sparse_backend
from recemb.models.layers import mlp

# Han (incl. extension A and compatibility ideographs), kana, Hangul syllables.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN_RE = re.compile(rf"[{_CJK}]+|[^\W{_CJK}]+")
_CJK_RE = re.compile(rf"[{_CJK}]")
TEXT_KEY = "text"  # the feature name of the hashed tokens in a KeyedJaggedTensor


def tokenize(text: str | None, min_n: int = 3, max_n: int = 6, cjk_bigrams: bool = True) -> list[str]:
    """Kind-prefixed tokens of ``text`` (module doc); ``None`` or ``""`` -> ``[]``."""
    if not text:
        return []
    out: list[str] = []
    for run in _TOKEN_RE.findall(unicodedata.normalize("NFC", text).lower()):
        if _CJK_RE.match(run):
            out.extend("z:" + c for c in run)
            if cjk_bigrams:
                out.extend("z:" + run[i : i + 2] for i in range(len(run) - 1))
            continue
        out.append("w:" + run)
        w = f"<{run}>"
        for n in range(min_n, max_n + 1):
            # The whole marked word is already the word token (fastText skips it too).
            out.extend("g:" + w[i : i + n] for i in range(len(w) - n + 1) if n < len(w))
    return out


def hash_token(token: str, buckets: int) -> int:
    """Stable bucket of one token: CRC-32 of its UTF-8 bytes modulo ``buckets``."""
    return zlib.crc32(token.encode("utf-8")) % buckets


class HashedTokenizer:
    """Texts -> CSR bucket ids for :class:`TextEncoder`.

    Args:
        buckets: rows of the embedding table; tokens are hashed into ``0..buckets-1``.
        min_n, max_n: character n-gram lengths (0 for ``max_n`` turns n-grams off).
        cjk_bigrams: also emit adjacent CJK character pairs.
    """

    def __init__(self, buckets: int = 1 << 18, min_n: int = 3, max_n: int = 6, cjk_bigrams: bool = True):
        if buckets < 1:
            raise ConfigError(f"HashedTokenizer: buckets must be >= 1, got {buckets} (content.buckets)")
        if max_n and not 1 <= min_n <= max_n:
            raise ConfigError(
                f"HashedTokenizer: need 1 <= min_n <= max_n for character n-grams, got {min_n}..{max_n} "
                "(content.min_n / content.max_n; max_n = 0 turns n-grams off)"
            )
        self.buckets, self.min_n, self.max_n, self.cjk_bigrams = buckets, min_n, max_n, cjk_bigrams

    def tokens(self, text: str | None) -> list[str]:
        return tokenize(text, self.min_n, self.max_n if self.max_n else 0, self.cjk_bigrams)

    def encode(self, texts: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``B`` texts -> ``(ids [T] int64, offsets [B + 1] int64)``; bag b = ``ids[offsets[b]:offsets[b+1]]``.

        An empty or null text is an empty bag (the encoder then returns zeros
        for it and reports it through :func:`bag_lengths`).
        """
        ids: list[int] = []
        offsets = [0]
        cache: dict[str, int] = {}  # vocabulary words repeat a lot; crc32 once per distinct token
        for text in texts:
            for tok in self.tokens(text):
                b = cache.get(tok)
                if b is None:
                    b = cache[tok] = hash_token(tok, self.buckets)
                ids.append(b)
            offsets.append(len(ids))
        return np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


_Offsets = TypeVar("_Offsets", np.ndarray, torch.Tensor)


def bag_lengths(offsets: _Offsets) -> _Offsets:
    """``[B]`` tokens per bag of a CSR batch (0 = no text)."""
    return offsets[1:] - offsets[:-1]


def slice_bags(ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR sub-batch of bags ``rows`` ``[b]`` (in that order), for mini-batching."""
    lengths = bag_lengths(offsets)[rows]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if new_offsets[-1] == 0:
        return np.zeros(0, dtype=np.int64), new_offsets
    starts = np.repeat(offsets[rows], lengths)
    within = np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1], lengths)
    return ids[starts + within], new_offsets


def make_kjt(ids: torch.Tensor, offsets: torch.Tensor, key: str = TEXT_KEY):
    """A one-key torchrec ``KeyedJaggedTensor`` from a CSR batch (the model boundary).

    The jagged layout, for bags ``[[3, 9], [], [4]]``::

        key    | bag 0  | bag 1 | bag 2
        "text" | 3, 9   |       | 4        values = [3, 9, 4], lengths = [2, 0, 1]
    """
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor.from_offsets_sync(keys=[key], values=ids, offsets=offsets)


class TextEncoder(nn.Module):
    """Hashed tokens -> ``[B, D]``: mean of bucket vectors, then an optional MLP.

    Args:
        buckets: rows of the hashed table (match the :class:`HashedTokenizer`).
        dim: bucket vector size.
        hidden: MLP widths after pooling (``()`` = none; output dim = ``dim``),
            e.g. ``(128, 64)`` -> output 64.
        backend: ``"torch"`` (``nn.EmbeddingBag``), ``"torchrec"``
            (``EmbeddingBagCollection`` over a ``KeyedJaggedTensor``) or
            ``"auto"`` (torchrec when it imports, else torch).
        device: where the parameters live.
        sparse: torch backend: sparse gradients for the table (optimise it
            with ``torch.optim.SparseAdam``; see ``align.make_optimizers``).

    An empty bag pools to zeros (both backends); callers that need a
    learned "no text" vector use :func:`bag_lengths` (see ``fusion``).
    """

    def __init__(
        self,
        buckets: int,
        dim: int = 64,
        hidden: Sequence[int] = (),
        backend: str = "torch",
        device: str | torch.device = "cpu",
        sparse: bool = True,
    ):
        super().__init__()
        if backend not in ("torch", "torchrec", "auto"):
            raise ConfigError(f"TextEncoder: backend must be 'torch', 'torchrec' or 'auto', got {backend!r}")
        backend = resolve_sparse_backend(backend)
        self.backend, self.buckets = backend, buckets
        device = torch.device(device)
        if backend == "torchrec":
            from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

            table = EmbeddingBagConfig(
                name="t_" + TEXT_KEY,
                embedding_dim=dim,
                num_embeddings=buckets,
                feature_names=[TEXT_KEY],
                pooling=PoolingType.MEAN,
            )
            self.bags = EmbeddingBagCollection(tables=[table], device=device)
        else:
            # Sparse gradients: a batch touches a few thousand of the buckets, and a
            # dense Adam step over all of them dominated training time on CPU.
            self.bags = nn.EmbeddingBag(buckets, dim, mode="mean", sparse=sparse, device=device)
        # Small init: a text is the mean of many buckets, so the pooled vector stays O(0.1).
        for p in self.bags.parameters():
            nn.init.normal_(p, std=0.1)
        self.head = mlp([dim, *hidden]).to(device)
        self.out_dim = hidden[-1] if hidden else dim

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``ids [T]`` int64, ``offsets [B + 1]`` int64 -> ``[B, out_dim]``."""
        if self.backend == "torchrec":
            pooled = self.bags(make_kjt(ids, offsets))[TEXT_KEY]
        else:
            # EmbeddingBag wants offsets [B] (bag starts) with include_last_offset=False.
            pooled = self.bags(ids, offsets[:-1])
        return self.head(pooled)
