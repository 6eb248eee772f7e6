"""Score matrices to ranks and top-k lists (DESIGN.md §7).

Orientation everywhere: ``scores`` is ``[B, N]``, one row per query and one
column per catalogue item (dense item index from the ``Vocab``). Higher is
better. Items that must not be recommended (seen items, P-ML) are set to
``-inf`` with :func:`apply_mask` before ranking.

Ties are broken at random (DESIGN.md §7): a model that gives many items the
same score (popularity, sparse kNN) must not profit from the item order.

Memory: the full-catalogue passes run over blocks of rows so that the
temporaries stay a few tens of MB even for ``B = 4096, N = 100k``; no
``[B, N]`` int64 array is ever built.
"""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np

from recemb.errors import RecembError

_torch: ModuleType | None  # None: numpy only (tests set it so, to cover that path)
try:  # optional: only speeds up topk
    import torch

    _torch = torch
except ImportError:  # pragma: no cover - exercised where torch is absent
    _torch = None

# Elements per temporary block (bool/float32): 2**24 -> 16 MB of bools.
_BLOCK_ELEMS = 1 << 24


def _row_blocks(n_rows: int, n_cols: int) -> tuple[range, int]:
    """``(start rows, rows per block)`` for blocks of at most ``_BLOCK_ELEMS`` elements."""
    step = max(1, _BLOCK_ELEMS // max(n_cols, 1))
    return range(0, n_rows, step), step


def _check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise RecembError(f"{name} must be a 2-D [B, N] array (queries x items), got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise RecembError(
            f"{name} must be a float array (float32 recommended), got dtype {scores.dtype}; "
            "cast with scores.astype(np.float32)"
        )
    return scores


def _check_no_nan(block: np.ndarray, row0: int, name: str = "scores") -> None:
    nan_rows = np.flatnonzero(np.isnan(block).any(axis=1))
    if nan_rows.size:
        raise RecembError(
            f"{name} row {row0 + int(nan_rows[0])} contains NaN; a model produced an invalid "
            "score: fix the model, or set excluded items to -inf instead of NaN"
        )


def apply_mask(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Set ``scores[rows, cols] = -inf`` in place (mask seen items of a batch).

    Args:
        scores: ``[B, N]`` float array, modified in place.
        rows: ``[M]`` int row indices in ``[0, B)`` (query of each masked pair).
        cols: ``[M]`` int item indices in ``[0, N)``; duplicates are harmless.
    """
    scores = _check_scores(scores)
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise RecembError(f"rows and cols must be 1-D arrays of equal length, got {rows.shape} and {cols.shape}")
    if rows.size == 0:
        return
    if not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
        raise RecembError(f"rows/cols must be integer indices, got {rows.dtype}/{cols.dtype}")
    b, n = scores.shape
    bad = np.flatnonzero((rows < 0) | (rows >= b) | (cols < 0) | (cols >= n))
    if bad.size:
        i = int(bad[0])
        raise RecembError(
            f"mask pair {i} = (row {int(rows[i])}, col {int(cols[i])}) is outside scores of shape "
            f"{scores.shape}; map item ids through the same Vocab as the scores' columns"
        )
    if not scores.flags.writeable:
        raise RecembError("scores is read-only; pass a writable copy (scores.copy())")
    scores[rows, cols] = -np.inf


def target_ranks(scores: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-based rank of each query's target item, ties broken at random.

    ``rank = 1 + #(items scoring > s_t) + U``, with ``U`` uniform on
    ``{0, ..., #(other items scoring == s_t)}``: the target lands at a uniformly
    random place inside its tie group. With all N scores equal the rank is
    uniform on ``1..N``.

    Args:
        scores: ``[B, N]`` float, masked entries already ``-inf``; no NaN.
        targets: ``[B]`` int item indices; ``-1`` means the target is not in the
            catalogue.
        rng: source of the tie-breaking draws (one draw per query, always, so
            results are reproducible for a given seed whatever the ties).

    Returns:
        ``[B]`` float64 ranks; ``inf`` where the target is ``-1`` or its own
        score is ``-inf`` (masked: it can never be recommended).
    """
    scores = _check_scores(scores)
    targets = np.asarray(targets)
    b, n = scores.shape
    if targets.shape != (b,):
        raise RecembError(f"targets must have shape [B] = ({b},), got {targets.shape}")
    if b and not np.issubdtype(targets.dtype, np.integer):
        raise RecembError(f"targets must be integer item indices, got dtype {targets.dtype}")
    bad = np.flatnonzero((targets < -1) | (targets >= n))
    if bad.size:
        i = int(bad[0])
        raise RecembError(
            f"targets[{i}] = {int(targets[i])} is outside the catalogue [0, {n}); "
            "use -1 for a target that is not in the catalogue"
        )
    in_cat = targets >= 0
    t_score = scores[np.arange(b), np.where(in_cat, targets, 0)]
    n_greater = np.empty(b, dtype=np.int64)
    n_equal = np.empty(b, dtype=np.int64)
    starts, step = _row_blocks(b, n)
    for r0 in starts:
        block = scores[r0 : r0 + step]
        _check_no_nan(block, r0)
        s = t_score[r0 : r0 + step, None]
        # count_nonzero on a bool block: one bool temporary, no int64 [B, N].
        n_greater[r0 : r0 + step] = np.count_nonzero(block > s, axis=1)
        n_equal[r0 : r0 + step] = np.count_nonzero(block == s, axis=1)
    # n_equal counts the target itself; the others are n_equal - 1 (>= 0 when in
    # the catalogue; clip guards the -1 rows that read column 0).
    n_other_ties = np.maximum(n_equal - 1, 0)
    offset = rng.integers(0, n_other_ties + 1)
    ranks = (1 + n_greater + offset).astype(np.float64)
    ranks[~in_cat | np.isneginf(t_score)] = np.inf
    return ranks


def topk(scores: np.ndarray, k: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per row, sorted by descending score.

    Args:
        scores: ``[B, N]`` float; ``-inf`` for masked items; no NaN.
        k: list length, ``>= 1``; clipped to ``N``.
        rng: when given, exact ties are broken uniformly at random, both in the
            order inside the list and in which tied items make the cut at
            position k (independently per row). When ``None`` the choice among
            ties at the cut is deterministic but unspecified, and tied items
            inside the list are ordered by ascending item index.

    Returns:
        ``(indices [B, k'] int64, values [B, k'] scores.dtype)`` with
        ``k' = min(k, N)``. Rows with fewer than ``k'`` unmasked items end with
        ``-inf`` values; callers drop those entries if they need to.
    """
    scores = _check_scores(scores)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RecembError(f"k must be a positive integer, got {k!r}")
    b, n = scores.shape
    k = min(int(k), n)
    idx_out = np.empty((b, k), dtype=np.int64)
    val_out = np.empty((b, k), dtype=scores.dtype)
    if n == 0:
        return idx_out, val_out
    starts, step = _row_blocks(b, n)
    for r0 in starts:
        block = scores[r0 : r0 + step]
        _check_no_nan(block, r0)
        idx, val = _topk_block(block, k, rng)
        idx_out[r0 : r0 + step] = idx
        val_out[r0 : r0 + step] = val
    return idx_out, val_out


def _largest_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unordered k largest per row of ``[b, N]``: ``(values [b, k], indices [b, k] int64)``.

    torch.topk is ~10x faster than np.argpartition on wide rows; torch is an
    optional extra, so numpy is the fallback.
    """
    b, n = block.shape
    if k == n:
        return block.copy(), np.broadcast_to(np.arange(n, dtype=np.int64), (b, n)).copy()
    if _torch is not None:
        with warnings.catch_warnings():
            # A read-only input only triggers a warning; topk never writes to it.
            warnings.simplefilter("ignore", UserWarning)
            t = _torch.from_numpy(block)
        top_val, top_idx = _torch.topk(t, k, dim=1, sorted=False)
        return top_val.numpy(), top_idx.numpy().astype(np.int64, copy=False)
    idx = np.argpartition(block, n - k, axis=1)[:, n - k :].astype(np.int64, copy=False)
    return np.take_along_axis(block, idx, axis=1), idx


def _topk_block(block: np.ndarray, k: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk` on one block of rows ``[b, N]``."""
    block = np.ascontiguousarray(block)
    b, n = block.shape
    val, idx = _largest_k(block, k)
    if rng is None:
        # Sort by (score desc, item index asc); lexsort's last key is primary.
        order = np.lexsort((idx, -val), axis=1)
        return np.take_along_axis(idx, order, axis=1), np.take_along_axis(val, order, axis=1)

    # Which tied items make the cut: only matters where the k-th value v also
    # occurs outside the list. Those rows are redone with a float32 key that
    # ranks "> v" first, "== v" next (random order inside both) and the rest
    # last; the k smallest keys are a uniformly random valid list.
    kth = val.min(axis=1, keepdims=True)
    cut_ties = np.count_nonzero(block == kth, axis=1) > np.count_nonzero(val == kth, axis=1)
    rows = np.flatnonzero(cut_ties)
    if rows.size:
        sub = block[rows]
        key = rng.random(sub.shape, dtype=np.float32)
        key[sub > kth[rows]] -= 2.0  # [-2, -1): always in
        key[sub < kth[rows]] = 2.0  # never in
        _, idx_sub = _largest_k(-key, k)
        idx[rows] = idx_sub
        val[rows] = np.take_along_axis(sub, idx_sub, axis=1)
    # Inside the list: score desc, then a random key, i.e. random order of ties.
    order = np.lexsort((rng.random(val.shape), -val), axis=1)
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(val, order, axis=1)
