"""CPU backend: one epoch of SGNS (skip-gram or CBOW) as a numba Hogwild kernel.

Why it is fast (DESIGN.md §9, "SGNS speed calibration"):

- Hogwild: the corpus is cut into one contiguous shard of sessions per
  thread (``numba.prange``); threads update the shared matrices without
  locks, as word2vec.c and gensim do. Collisions are rare and harmless.
- Cheap per-thread RNG: word2vec's 64-bit LCG, one multiply-add per draw.
- Optional shared negatives (``shared=1``; Ji et al. 2016, "Parallelizing Word2Vec in Shared and
  Distributed Memory"): for each centre, K negatives are drawn once and
  shared by all its context items, so a window is a small dense block
  ``[C context rows] x [1 + K output rows]`` computed from L1-resident rows
  and written back once, instead of C separate passes with C*K random rows.
- float32 loops over ``dim`` that LLVM vectorises (fastmath), and sigmoid /
  log-sigmoid from lookup tables instead of exp/log per pair.

Objective, per (centre c, context x) pair of a session::

    skip-gram:  log s(in[x] . out[c]) + sum_k log s(-in[x] . out[n_k])
    CBOW:       h = mean(in[x] for x in window(c));  log s(h . out[c]) + sum_k log s(-h . out[n_k])

with ``in`` = ``syn0`` (the item vectors that are exported) and ``out`` =
``syn1`` (output weights), both ``[V, D]`` float32. Learning rate decays
linearly from ``alpha_start`` to ``alpha_end`` across the epoch (the caller
spreads alpha..min_alpha over all epochs).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_MUL = np.uint64(25214903917)  # word2vec.c's LCG
_ADD = np.uint64(11)
_SHIFT_RAND = np.uint64(16)
_SHIFT_UNIFORM = np.uint64(40)  # top 24 bits -> uniform float in [0, 1)
_INV_2_24 = np.float32(1.0 / (1 << 24))
MAX_EXP = 6.0
EXP_TABLE_SIZE = 1000


def sigmoid_tables() -> tuple[np.ndarray, np.ndarray]:
    """``[EXP_TABLE_SIZE]`` float32 sigmoid and log-sigmoid over ``[-MAX_EXP, MAX_EXP]``."""
    x = (np.arange(EXP_TABLE_SIZE, dtype=np.float64) / EXP_TABLE_SIZE * 2 - 1) * MAX_EXP
    sig = 1.0 / (1.0 + np.exp(-x))
    return sig.astype(np.float32), np.log(sig).astype(np.float32)


def shard_bounds(indptr: np.ndarray, n_shards: int) -> np.ndarray:
    """``[n_shards + 1]`` int64 session boundaries giving each shard ~equal events."""
    n_events = indptr[-1]
    targets = np.linspace(0, n_events, n_shards + 1)
    bounds = np.searchsorted(indptr, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, len(indptr) - 1
    return np.maximum.accumulate(bounds)


@njit(inline="always")
def _sigmoid(f, sig_table, scale):
    """sigmoid(f) from the table, 0 / 1 beyond -MAX_EXP / MAX_EXP."""
    if f >= MAX_EXP:
        return np.float32(1.0)
    if f <= -MAX_EXP:
        return np.float32(0.0)
    return sig_table[int((f + MAX_EXP) * scale)]


@njit(inline="always")
def _logsig(f, log_table, scale):
    """log(sigmoid(f)) from the table, linear below -MAX_EXP (where log s(f) ~ f)."""
    if f >= MAX_EXP:
        return np.float32(0.0)
    if f <= -MAX_EXP:
        return np.float32(f)
    return log_table[int((f + MAX_EXP) * scale)]


@njit(inline="always")
def _sgns_term(x, xr, out, o, out_grad, og, in_grad, ig, label, alpha, sig_table, log_table, scale):
    """One (input, output) term of the SGNS objective; returns its negative log-likelihood.

    Rows are passed as (matrix, row index) pairs, not as row views: inlined
    into the kernel this keeps numba's loops as fast as the hand-written ones.

    Args:
        x, xr: the input vector ``x[xr]`` (``[D]``: a ``syn0`` row, or CBOW's mean of the context rows).
        out, o: the output row ``out[o]`` (``syn1`` row of the target or of a negative).
        out_grad, og: receives ``g * x[xr]`` in ``out_grad[og]``: ``syn1[o]`` itself to
            update at once, or an accumulator the caller writes back later (shared negatives).
        in_grad, ig: accumulates ``g * out[o]`` in ``in_grad[ig]``; the caller adds it to ``syn0``.
        label: 1 for the target, 0 for a negative.

    A saturated score (``|x . out| >= MAX_EXP``) gives no update and no loss,
    as in word2vec.c and gensim. ``out[o, d]`` is read before ``out_grad[og, d]``
    is written, so ``out_grad[og]`` may be ``out[o]`` itself.
    """
    dim = x.shape[1]
    f = np.float32(0.0)
    for d in range(dim):
        f += x[xr, d] * out[o, d]
    if f >= MAX_EXP or f <= -MAX_EXP:
        return np.float32(0.0)
    g = (label - _sigmoid(f, sig_table, scale)) * alpha
    for d in range(dim):
        in_grad[ig, d] += g * out[o, d]
        out_grad[og, d] += g * x[xr, d]
    return -_logsig(f if label > 0 else -f, log_table, scale)


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def train_epoch(
    syn0,
    syn1,
    indptr,
    indices,
    keep_prob,
    neg_table,
    sig_table,
    log_table,
    bounds,
    window,
    negatives,
    cbow,
    shrink,
    shared,
    alpha_start,
    alpha_end,
    seed,
):
    """Train one epoch in place. Returns ``(loss [T], pairs [T], words [T])`` per shard.

    Args:
        syn0, syn1: ``[V, D]`` float32 input / output matrices, updated in place.
        indptr, indices: the corpus CSR (``[S+1]`` int64, ``[E]`` int32).
        keep_prob: ``[V]`` float32 sub-sampling keep probability.
        neg_table: ``[T]`` int32 negative-sampling table.
        sig_table, log_table: from :func:`sigmoid_tables`.
        bounds: ``[n_shards + 1]`` session boundaries (:func:`shard_bounds`).
        window: max context distance; 0 = the whole session.
        negatives: K. cbow: 1 for CBOW, 0 for skip-gram. shrink: 1 to draw
            each centre's window from 1..window. shared: 1 to share a
            centre's negatives across its context items (skip-gram only).
        seed: int; shard s seeds its RNG from (seed, s).

    ``loss`` sums the negative log-likelihood over (context, target) terms
    and ``pairs`` counts the (centre, context) pairs (CBOW: centres).
    """
    n_shards = len(bounds) - 1
    dim = syn0.shape[1]
    max_len = 1
    for s in range(len(indptr) - 1):
        max_len = max(max_len, indptr[s + 1] - indptr[s])
    max_ctx = max_len if window == 0 else min(max_len, 2 * window)
    table_len = np.uint64(len(neg_table))
    scale = np.float32(EXP_TABLE_SIZE / MAX_EXP / 2.0)
    loss_out = np.zeros(n_shards, dtype=np.float64)
    pairs_out = np.zeros(n_shards, dtype=np.int64)
    words_out = np.zeros(n_shards, dtype=np.int64)
    for shard in prange(n_shards):
        s_lo, s_hi = bounds[shard], bounds[shard + 1]
        shard_words = max(1, indptr[s_hi] - indptr[s_lo])
        rng = np.uint64(seed) * np.uint64(2654435761) + np.uint64(shard) * np.uint64(97) + np.uint64(1)
        buf = np.empty(max_len, dtype=np.int32)
        ctx = np.empty(max_ctx, dtype=np.int32)
        tgt = np.empty(negatives + 1, dtype=np.int32)
        lbl = np.empty(negatives + 1, dtype=np.float32)
        grad_in = np.empty((max_ctx, dim), dtype=np.float32)
        grad_out = np.empty((negatives + 1, dim), dtype=np.float32)
        hidden = np.empty((1, dim), dtype=np.float32)  # CBOW's mean context vector
        loss = 0.0
        pairs = 0
        words = 0
        for sess in range(s_lo, s_hi):
            start, stop = indptr[sess], indptr[sess + 1]
            # Sub-sample: kept items close up, so windows reach over dropped ones.
            n = 0
            for p in range(start, stop):
                w = indices[p]
                kp = keep_prob[w]
                if kp < 1.0:
                    rng = rng * _MUL + _ADD
                    if kp < np.float32(rng >> _SHIFT_UNIFORM) * _INV_2_24:
                        continue
                buf[n] = w
                n += 1
            words += stop - start
            alpha = np.float32(alpha_start + (alpha_end - alpha_start) * (words / shard_words))
            if n < 2:
                continue
            for i in range(n):
                if window == 0:
                    lo, hi = 0, n
                else:
                    b = window
                    if shrink:
                        rng = rng * _MUL + _ADD
                        b = window - np.int64((rng >> _SHIFT_RAND) % np.uint64(window))
                    lo, hi = max(0, i - b), min(n, i + b + 1)
                c = 0
                for j in range(lo, hi):
                    if j != i:
                        ctx[c] = buf[j]
                        c += 1
                if c == 0:
                    continue
                centre = buf[i]
                tgt[0] = centre
                lbl[0] = 1.0
                for k in range(1, negatives + 1):
                    rng = rng * _MUL + _ADD
                    neg = neg_table[np.int64((rng >> _SHIFT_RAND) % table_len)]
                    tgt[k] = neg
                    # A negative equal to the centre is skipped (label -1), as in word2vec.
                    lbl[k] = np.float32(-1.0) if neg == centre else np.float32(0.0)
                if cbow:
                    pairs += 1
                    inv = np.float32(1.0 / c)
                    for d in range(dim):
                        hidden[0, d] = 0.0
                    for r in range(c):
                        a = ctx[r]
                        for d in range(dim):
                            hidden[0, d] += syn0[a, d]
                    for d in range(dim):
                        hidden[0, d] *= inv
                        grad_in[0, d] = 0.0
                    for t in range(negatives + 1):
                        if lbl[t] >= 0:
                            o = tgt[t]
                            loss += _sgns_term(
                                hidden, 0, syn1, o, syn1, o, grad_in, 0, lbl[t], alpha, sig_table, log_table, scale
                            )
                    for r in range(c):
                        a = ctx[r]
                        for d in range(dim):
                            syn0[a, d] += grad_in[0, d]
                elif shared:
                    pairs += c
                    for t in range(negatives + 1):
                        for d in range(dim):
                            grad_out[t, d] = 0.0
                    for r in range(c):
                        a = ctx[r]
                        for d in range(dim):
                            grad_in[r, d] = 0.0
                        for t in range(negatives + 1):
                            if lbl[t] >= 0:
                                o = tgt[t]
                                loss += _sgns_term(
                                    syn0,
                                    a,
                                    syn1,
                                    o,
                                    grad_out,
                                    t,
                                    grad_in,
                                    r,
                                    lbl[t],
                                    alpha,
                                    sig_table,
                                    log_table,
                                    scale,
                                )
                    # Write the block back once: every gradient above used the
                    # same (pre-update) rows, like a mini-batch of c pairs.
                    for r in range(c):
                        a = ctx[r]
                        for d in range(dim):
                            syn0[a, d] += grad_in[r, d]
                    for t in range(negatives + 1):
                        if lbl[t] < 0:
                            continue
                        o = tgt[t]
                        for d in range(dim):
                            syn1[o, d] += grad_out[t, d]
                else:
                    # word2vec's order: fresh negatives per pair, updates applied at once.
                    pairs += c
                    for r in range(c):
                        a = ctx[r]
                        if r > 0:
                            for k in range(1, negatives + 1):
                                rng = rng * _MUL + _ADD
                                neg = neg_table[np.int64((rng >> _SHIFT_RAND) % table_len)]
                                tgt[k] = neg
                                lbl[k] = np.float32(-1.0) if neg == centre else np.float32(0.0)
                        for d in range(dim):
                            grad_in[0, d] = 0.0
                        for t in range(negatives + 1):
                            if lbl[t] >= 0:
                                o = tgt[t]
                                loss += _sgns_term(
                                    syn0, a, syn1, o, syn1, o, grad_in, 0, lbl[t], alpha, sig_table, log_table, scale
                                )
                        for d in range(dim):
                            syn0[a, d] += grad_in[0, d]
        loss_out[shard] = loss
        pairs_out[shard] = pairs
        words_out[shard] = words
    return loss_out, pairs_out, words_out


def set_threads(threads: int) -> int:
    """Use ``threads`` numba threads (0 = numba's default); returns the count in use."""
    # Always set it: numba's thread count is process-global, so an earlier
    # fit with threads=1 must not leak into a later one with threads=0.
    limit = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # numba.config sets it at runtime
    numba.set_num_threads(min(threads, limit) if threads > 0 else limit)
    return numba.get_num_threads()
