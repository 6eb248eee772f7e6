"""Exact search over compressed vectors: float16, or int8 with a per-row scale, and a float32 re-rank.

An item set stored as float32 ``[N, D]`` costs ``4 N D`` bytes; float16 halves
it and int8 quarters it (plus 4 bytes of scale per row). :class:`QuantizedIndex`
keeps only the codes in memory (memory-mapped from ``codes.npy``), scores
every item blockwise from them (:class:`~recemb.index.exact.ExactIndex`'s
blocked top-k, decoding one block at a time), and re-scores the best
``rerank`` of each query with the float32 vectors (the EmbeddingSet,
memory-mapped: only those rows are read), so that the returned top-k and
scores are exact whenever the true top-k is among the ``rerank`` best by
code.

Codes (for cosine the rows are unit-normalised first, so the scale of a row
is not part of its score)::

    float16  codes = x.astype(float16)
    int8     scale_r = max_d |x_rd| / 127 (1 for a zero row), codes = round(x_r / scale_r)
"""

from __future__ import annotations

import numpy as np

from recemb.index.base import RecembIndexError, check_vectors, to_similarity
from recemb.index.exact import ExactIndex, _merge_topk
from recemb.vectors import l2_normalize

CODECS = ("float32", "float16", "int8")


def encode(vectors: np.ndarray, codec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(codes [N, D], scales [N] float32 or None)`` of float32 ``vectors`` (module docstring)."""
    x = np.asarray(vectors, dtype=np.float32)
    if codec == "float16":
        return x.astype(np.float16), None
    if codec == "int8":
        scale = np.abs(x).max(axis=1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8), scale
    raise RecembIndexError(f"codec must be one of {CODECS[1:]} for a compressed index, got {codec!r}")


def decode(codes: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """float32 ``[M, D]`` of codes (a block of rows and their scales)."""
    x = np.asarray(codes, dtype=np.float32)
    return x if scales is None else x * np.asarray(scales, dtype=np.float32)[:, None]


class QuantizedIndex(ExactIndex):
    """Blocked exact search over codes, the best ``rerank`` re-scored with ``originals`` (module docstring).

    Args:
        metric: cosine, dot or euclidean.
        codec: ``float16`` or ``int8``.
        rerank: candidates per query re-scored in float32 (0: none, the codes' own scores).
        originals: the float32 vectors ``[N, D]`` the codes were made from (a memmap is fine);
            needed for ``rerank > 0``.
    """

    def __init__(
        self,
        metric: str = "cosine",
        codec: str = "int8",
        rerank: int = 100,
        originals: np.ndarray | None = None,
        max_block_bytes: int = 64 << 20,
    ):
        super().__init__(metric, max_block_bytes)
        if codec not in CODECS[1:]:
            raise RecembIndexError(f"codec must be one of {CODECS[1:]}, got {codec!r}")
        if rerank < 0:
            raise RecembIndexError(f"rerank must be >= 0, got {rerank}")
        self.codec, self.rerank, self.originals = codec, int(rerank), originals
        self.scales: np.ndarray | None = None

    @property
    def codes(self) -> np.ndarray | None:
        """The ``[N, D]`` codes searched (None before :meth:`build` / :meth:`attach`)."""
        return self._x

    @property
    def is_exact_after_rerank(self) -> bool:
        return self.rerank > 0 and self.originals is not None

    def build(self, vectors: np.ndarray) -> QuantizedIndex:
        """Encode float32 ``vectors [N, D]`` (kept as ``originals`` for the re-rank unless given)."""
        x = check_vectors(vectors, "QuantizedIndex.build")
        if self.originals is None:
            self.originals = x
        codes, scales = encode(l2_normalize(x) if self.metric == "cosine" else x, self.codec)
        return self.attach(codes, scales)

    def attach(self, codes: np.ndarray, scales: np.ndarray | None) -> QuantizedIndex:
        """Search these codes (e.g. memory-mapped from an export) from now on."""
        want = np.int8 if self.codec == "int8" else np.float16
        if codes.ndim != 2 or codes.dtype != want:
            raise RecembIndexError(
                f"{self.codec} codes must be a 2-D {np.dtype(want)} array, got {codes.dtype} {codes.shape}"
            )
        if (self.codec == "int8") != (scales is not None) or (scales is not None and scales.shape != (codes.shape[0],)):
            raise RecembIndexError(
                f"{self.codec} codes need {'one scale per row' if self.codec == 'int8' else 'no scales'}"
            )
        if self.originals is not None and self.originals.shape != codes.shape:
            raise RecembIndexError(f"originals {self.originals.shape} do not match the codes {codes.shape}")
        self._x, self.scales = codes, scales
        self._count, self._dim = int(codes.shape[0]), int(codes.shape[1])
        if self.metric == "cosine":  # decoded rows are unit up to rounding: their own norms, blockwise
            self._inv_norm = np.empty(self._count, dtype=np.float32)
            for lo in range(0, self._count, 65536):
                n = np.linalg.norm(self._block(codes, lo, lo + 65536), axis=1)
                self._inv_norm[lo : lo + 65536] = np.where(n > 0, 1.0 / np.where(n > 0, n, 1.0), 0.0)
        return self

    def _block(self, x: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return decode(x[lo:hi], None if self.scales is None else self.scales[lo:hi])

    def _search(self, queries: np.ndarray, k: int, rows: np.ndarray, scores: np.ndarray) -> None:
        if not self.is_exact_after_rerank:
            super()._search(queries, k, rows, scores)
            return
        wide = min(self._count, max(k, self.rerank))
        cand_rows = np.full((queries.shape[0], wide), -1, dtype=np.int64)
        cand_scores = np.full((queries.shape[0], wide), -np.inf, dtype=np.float32)
        super()._search(queries, wide, cand_rows, cand_scores)
        q = l2_normalize(queries) if self.metric == "cosine" else queries
        assert self.originals is not None
        for i in range(queries.shape[0]):  # exact float32 scores of the candidates only
            r = cand_rows[i]
            x = np.asarray(self.originals[r], dtype=np.float32)
            inv = None
            if self.metric == "cosine":
                n = np.linalg.norm(x, axis=1)
                inv = np.where(n > 0, 1.0 / np.where(n > 0, n, 1.0), 0.0).astype(np.float32)
            s = to_similarity(self.metric, q[i : i + 1], x, inv)
            best_s, best_r = _merge_topk(s, r[None, :], k)
            rows[i, :k] = best_r[0]
            scores[i, :k] = best_s[0]
