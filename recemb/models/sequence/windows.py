"""Canonical events -> padded item windows: the training examples and the query batches.

A *sequence* is one session (or one user's history when events have no
session ids), oldest first. Items are stored as rows of the model's item
Vocab plus one (``0`` is padding), time gaps as buckets (``0`` = unknown).

Training (every position of every sequence is a target, exactly once): a
sequence of ``n`` items has ``n - 1`` targets, item ``t + 1`` predicted from
items ``0..t``. They are cut into windows of at most ``L`` inputs from the
end of the sequence backwards, so the newest window is full and each target
is in exactly one window::

    items    a b c d e f g     (n = 7, L = 4)
    window 1 inputs [a b]      targets [b c]
    window 0 inputs [c d e f]  targets [d e f g]

Windows are right-padded: position ``p`` of a window is the ``p``-th item of
it, the same position a query of ``p + 1`` items has at its last item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError

PAD = 0  # input id of padding; item row r is input id r + 1
NO_TARGET = -1
UNKNOWN_GAP = 0


def gap_buckets(seconds: np.ndarray, buckets: int) -> np.ndarray:
    """``[T]`` int64 bucket of each gap: ``1 + floor(log2(1 + s))`` capped at ``buckets - 1``; NaN or < 0 -> 0."""
    s = np.asarray(seconds, dtype=np.float64)
    known = np.isfinite(s) & (s >= 0)
    out = np.zeros(len(s), dtype=np.int64)
    out[known] = np.minimum(1 + np.floor(np.log2(1.0 + s[known])).astype(np.int64), buckets - 1)
    return out


def history_gaps(ts: np.ndarray, offsets: np.ndarray, buckets: int) -> np.ndarray:
    """``[T]`` gap buckets of CSR histories' event times ``ts`` (seconds); each history's first item: 0."""
    ts = np.asarray(ts, dtype=np.float64)
    seconds = np.diff(ts, prepend=np.nan)
    gaps = gap_buckets(seconds, buckets)
    starts = np.asarray(offsets[:-1])[np.diff(offsets) > 0]
    gaps[starts] = UNKNOWN_GAP
    return gaps


@dataclass(frozen=True)
class Sequences:
    """All sequences in CSR layout.

    Attributes:
        items: ``[T]`` int64 item rows (of the model's Vocab), oldest first per sequence.
        gaps: ``[T]`` int64 gap buckets (0 for each sequence's first item).
        offsets: ``[S + 1]`` int64; sequence s is ``items[offsets[s]:offsets[s + 1]]``.
    """

    items: np.ndarray
    gaps: np.ndarray
    offsets: np.ndarray

    @property
    def n_targets(self) -> int:
        """Training targets: every item but each sequence's first."""
        return int(np.maximum(np.diff(self.offsets) - 1, 0).sum())

    def spans(self, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(items, gaps, starts)`` holding ``items[starts[i] : starts[i] + lengths[i]]`` for every i:
        in memory, the arrays themselves (a file-backed source reads just those spans)."""
        return self.items, self.gaps, starts


class SpanSource(Protocol):
    """Where windows read their items: :class:`Sequences` in memory, or a window store's files."""

    def spans(self, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def build_sequences(events: pl.DataFrame, vocab: Vocab, buckets: int) -> Sequences:
    """Group canonical ``events`` into sequences of ``vocab`` rows (items outside it dropped).

    The unit is ``session_id``, or ``user_id`` where a row has none; order is
    ``ts`` with ties in table order.
    """
    for column in ("user_id", "item_id", "ts"):
        if column not in events.columns:
            raise DataValidationError(f"sequence model: events lack column {column!r}; pass canonical events")
    unit = pl.col("session_id").fill_null(pl.col("user_id")) if "session_id" in events.columns else pl.col("user_id")
    ev = events.select(unit.alias("_seq"), "item_id", "ts").sort(["_seq", "ts"], maintain_order=True)
    rows = vocab.lookup(ev["item_id"])
    ev = ev.with_columns(_row=pl.Series(rows, dtype=pl.Int64)).filter(pl.col("_row") >= 0)
    ev = ev.with_columns(
        _gap=(pl.col("ts").diff().dt.total_milliseconds() / 1000.0).over("_seq"),
        _first=pl.int_range(pl.len()).over("_seq") == 0,
    )
    lengths = ev.group_by("_seq", maintain_order=True).len()["len"].to_numpy().astype(np.int64)
    gaps = gap_buckets(ev["_gap"].fill_null(float("nan")).to_numpy(), buckets)
    gaps[ev["_first"].to_numpy()] = UNKNOWN_GAP
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Sequences(ev["_row"].to_numpy().astype(np.int64), gaps, offsets)


def repeat_rate(seqs: Sequences) -> float:
    """Share of the training targets that repeat an item earlier in their own sequence (0 if none)."""
    if seqs.n_targets == 0:
        return 0.0
    seq = np.repeat(np.arange(len(seqs.offsets) - 1), np.diff(seqs.offsets))
    first = pl.DataFrame({"s": seq, "i": seqs.items}).select(pl.struct("s", "i").is_first_distinct())
    return float((~first.to_series().to_numpy()).sum()) / seqs.n_targets


Batch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (inputs, gaps, targets, target_gaps), [B, L'] each


@dataclass(frozen=True)
class Windows:
    """``W`` training windows of at most ``L`` inputs, held as spans of the sequences' CSR arrays.

    Nothing is padded until a batch is built (:meth:`batch`): a window costs
    16 bytes here and the events 16 bytes each, where ``[W, L]`` padded int64
    arrays cost 40 x ``L`` bytes a window (2 kB at ``L`` = 50, whatever its length).

    Attributes:
        seqs: the sequences the windows cut, in memory or on disk (:class:`SpanSource`).
        starts: ``[W]`` int64 position in ``seqs.items`` of each window's first input.
        lengths: ``[W]`` int64 inputs in each window (>= 1); its targets are the items after them.
        width: ``L``, the longest window.
    """

    seqs: SpanSource
    starts: np.ndarray
    lengths: np.ndarray
    width: int

    def in_memory(self) -> Sequences:
        """The sequences, when they are in memory (digests and stores are made from those)."""
        if not isinstance(self.seqs, Sequences):
            raise TypeError("these windows read their items from a window store; load it with in_memory=True")
        return self.seqs

    def take(self, rows: np.ndarray) -> Windows:
        """The windows at ``rows``."""
        return Windows(self.seqs, self.starts[rows], self.lengths[rows], self.width)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, rows: np.ndarray, width: int | None = None) -> Batch:
        """``(inputs, gaps, targets, target_gaps)`` of the windows at ``rows``, each ``[B, width]`` int64.

        Right-padded (default ``width``: the longest of them): ``inputs`` are
        input ids (item row + 1; 0 = padding), ``gaps`` their gap buckets (a
        window's first is unknown, as in a query), ``targets`` the next item's
        row (-1 where no target), ``target_gaps`` the gap bucket from each
        input to its target (the query gap).
        """
        lengths = self.lengths[rows].astype(np.int64)
        # Each window's inputs and the target after its last one.
        items, gaps, starts = self.seqs.spans(self.starts[rows], lengths + 1)
        width = int(lengths.max(initial=1)) if width is None else width
        idx = starts[:, None] + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < lengths[:, None]
        idx = np.where(valid, idx, 0)
        inputs = np.where(valid, items[idx] + 1, PAD)
        input_gaps = np.where(valid, gaps[idx], UNKNOWN_GAP)
        input_gaps[:, 0] = UNKNOWN_GAP  # as in a query: a window's first item has no earlier item in view
        after = np.minimum(idx + 1, len(items) - 1)
        targets = np.where(valid, items[after], NO_TARGET)
        target_gaps = np.where(valid, gaps[after], UNKNOWN_GAP)
        # A store holds int32 items and uint8 gaps (recemb.models.sequence.window_store); batches are int64.
        return tuple(a.astype(np.int64, copy=False) for a in (inputs, input_gaps, targets, target_gaps))  # type: ignore[return-value]

    def padded(self) -> Batch:
        """:meth:`batch` of every window at width ``L`` (small data and tests only)."""
        return self.batch(np.arange(len(self)), self.width)

    @property
    def inputs(self) -> np.ndarray:
        """``[W, L]`` input ids of every window (padded; :meth:`padded`)."""
        return self.padded()[0]

    @property
    def targets(self) -> np.ndarray:
        """``[W, L]`` target rows of every window (padded; :meth:`padded`)."""
        return self.padded()[2]


def training_windows(seqs: Sequences, length: int) -> Windows:
    """Cut every sequence into windows of at most ``length`` inputs, newest first (module docstring)."""
    n_targets = np.maximum(np.diff(seqs.offsets) - 1, 0)
    chunks = -(-n_targets // length)  # ceil
    seq = np.repeat(np.arange(len(n_targets)), chunks)
    k = np.arange(int(chunks.sum())) - np.repeat(np.cumsum(chunks) - chunks, chunks)  # 0 = newest window
    first = seqs.offsets[:-1][seq]
    end = first + n_targets[seq] - k * length  # exclusive end of the window's inputs
    start = np.maximum(first, end - length)
    return Windows(seqs, start.astype(np.int64), (end - start).astype(np.int64), length)


def query_gaps(ts: np.ndarray | None, offsets: np.ndarray, at: np.ndarray | None, buckets: int) -> np.ndarray:
    """``[B]`` gap bucket from each history's last item time to its query time ``at`` (0 where unknown)."""
    b = len(offsets) - 1
    if ts is None or at is None:
        return np.zeros(b, dtype=np.int64)
    lengths = np.diff(offsets)
    last = np.full(b, np.nan)
    last[lengths > 0] = np.asarray(ts, dtype=np.float64)[offsets[1:][lengths > 0] - 1]
    return gap_buckets(np.asarray(at, dtype=np.float64) - last, buckets)


def query_windows(
    items: np.ndarray, offsets: np.ndarray, length: int, gaps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(inputs [B, L'], gaps [B, L'], lengths [B])`` of CSR histories' last ``length`` items, right-padded.

    ``L' = max(1, longest kept history)``; an empty history has length 0 (its
    row is all padding). ``gaps`` ``[T]`` are the items' gap buckets (None: unknown).
    """
    items = np.asarray(items, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.minimum(np.diff(offsets), length)
    width = max(1, int(lengths.max(initial=0)))
    start = offsets[1:] - lengths
    idx = start[:, None] + np.arange(width)[None, :]
    valid = np.arange(width)[None, :] < lengths[:, None]
    idx = np.where(valid, idx, 0)
    if len(items) == 0:
        zeros = np.zeros((len(lengths), width), dtype=np.int64)
        return zeros, zeros.copy(), lengths
    inputs = np.where(valid, items[idx] + 1, PAD)
    g = np.where(valid, gaps[idx], UNKNOWN_GAP) if gaps is not None else np.zeros_like(inputs)
    # The first item a query keeps has no earlier item in the window: its gap is unknown, as in training.
    g[:, 0] = UNKNOWN_GAP
    return inputs, g, lengths
