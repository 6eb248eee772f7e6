"""Two-tower training inputs on disk, read a few blocks at a time: a worker's memory does not grow with events.

The ``train two-tower`` job prepares its inputs once, in a child process
(:func:`prepare_store`): the events are loaded, split and turned into
:class:`~recemb.models.two_tower.features.Examples` there, and written as
flat ``.npy`` arrays. Every training process (in-process or each Ray Train
worker) then reads only the blocks of examples it is training on, with plain
file reads (no memory map, so pages it is done with are not counted against
it), plus the validation and serving histories on rank 0::

    <store>/
      examples_{seq,hist_start,hist_len,target,user_row}.npy   Examples, user-major
      trained_items.npy                                        [N] bool: items that are some example's target
      validation_{seq,starts,lengths,user_rows,targets}.npy    Validation (rank 0)
      serve_{seq,offsets}.npy, serve_users.parquet             each user's latest items (user vectors)
      items.parquet                                            the item Vocab (counts over all events)
      store.json                                               format, counts, sha256 of the events file

Epoch order (:func:`epoch_batches`): the examples are cut into blocks of
``BLOCK`` consecutive rows; each epoch permutes the blocks (seeded by seed and
epoch), rank r takes every W-th of them, reads ``WINDOW`` blocks at a time
and shuffles the rows inside them into batches. Every rank runs the same
number of steps (sharded lookups need every rank at each step); in-memory
examples (``TwoTower.fit``) go through the same order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError
from recemb.io import atomic_dir, write_json
from recemb.models.two_tower.features import Examples, gather_windows
from recemb.npyfile import NpyFile

STORE_FORMAT = "recemb.two_tower.examples/1"
BLOCK = 65_536  # examples per block (~2 MB of example rows)
WINDOW = 8  # blocks shuffled together: ~0.5M examples in memory per worker at a time
EXAMPLE_FIELDS = ("seq", "hist_start", "hist_len", "target", "user_row")
VALIDATION_FIELDS = ("seq", "starts", "lengths", "user_rows", "targets")


# --------------------------------------------------------------------------- reading


Seq = np.ndarray | NpyFile  # a CSR value array, in memory or on disk


def read_windows(seq: Seq, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, starts)`` for history windows ``seq[starts[i] : starts[i] + lengths[i]]`` (int64):
    in memory, ``seq`` itself; on disk, only the span of ``seq`` these windows cover, starts rebased."""
    if isinstance(seq, np.ndarray):
        return seq, starts
    if len(starts) == 0:
        return np.zeros(0, np.int64), starts
    lo, hi = int(starts.min()), int((starts + lengths).max())
    return seq.read(lo, hi).astype(np.int64), starts - lo


class InMemoryExamples:
    """:class:`Examples` already in memory, behind the block interface of :class:`ExampleFiles`."""

    def __init__(self, examples: Examples):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def trained_items(self, n_items: int) -> np.ndarray:
        """``[N]`` bool: the items some example has as its target."""
        mask = np.zeros(n_items, dtype=bool)
        mask[self.examples.target] = True
        return mask

    def blocks(self, spans: list[tuple[int, int]]) -> Examples:
        rows = np.concatenate([np.arange(a, b) for a, b in spans]) if spans else np.zeros(0, np.int64)
        return _take(self.examples, rows)


class ExampleFiles:
    """The examples of a store, read block by block (``examples_*.npy``)."""

    def __init__(self, store: Path):
        self.root = store
        self.files = {f: NpyFile(store / f"examples_{f}.npy") for f in EXAMPLE_FIELDS}
        n = len(self.files["target"])
        if any(len(self.files[f]) != n for f in ("hist_start", "hist_len", "user_row")):
            raise DataValidationError(f"{store}: example arrays of different lengths; re-run the two-tower job")

    def __len__(self) -> int:
        return len(self.files["target"])

    def trained_items(self, n_items: int) -> np.ndarray:
        """``[N]`` bool: the items some example has as its target (written with the store)."""
        mask = np.load(self.root / "trained_items.npy")
        if mask.shape != (n_items,) or mask.dtype != bool:
            raise DataValidationError(
                f"{self.root}: trained_items.npy does not fit {n_items} items; re-run the two-tower job"
            )
        return mask

    def blocks(self, spans: list[tuple[int, int]]) -> Examples:
        """The examples of row ranges ``spans``, with just the part of ``seq`` their histories use."""
        parts: dict[str, list[np.ndarray]] = {f: [] for f in EXAMPLE_FIELDS}
        base = 0
        for a, b in spans:
            length = self.files["hist_len"].read(a, b).astype(np.int64)
            seq, start = read_windows(self.files["seq"], self.files["hist_start"].read(a, b).astype(np.int64), length)
            parts["seq"].append(seq)
            parts["hist_start"].append(start + base)
            parts["hist_len"].append(length)
            parts["target"].append(self.files["target"].read(a, b).astype(np.int64))
            parts["user_row"].append(self.files["user_row"].read(a, b).astype(np.int64))
            base += len(seq)
        if not spans:
            return Examples(*(np.zeros(0, np.int64) for _ in EXAMPLE_FIELDS))
        return Examples(*(np.concatenate(parts[f]) for f in EXAMPLE_FIELDS))


ExampleSource = InMemoryExamples | ExampleFiles


MIN_BLOCKS = 8  # blocks per rank at least, so that ranks' shares differ by at most a block in 8


@dataclass(frozen=True)
class EpochPlan:
    """How an epoch of ``n`` examples is cut: block size, batch size and the steps every rank runs."""

    block: int
    batch: int
    steps: int

    @classmethod
    def of(cls, n: int, world: int, batch: int) -> EpochPlan:
        """Rank r gets every W-th block of a permutation; the smallest share any rank can get (a rank
        with the fewest blocks, the short last block among them) sets the steps, in whole batches."""
        block = max(1, min(BLOCK, n // (world * MIN_BLOCKS)))
        blocks = -(-n // block)
        last = n - (blocks - 1) * block
        smallest = max(0, (blocks // world) * block - (block - last))
        batch = max(1, min(batch, smallest))
        return cls(block, batch, smallest // batch if smallest >= 2 else 0)


def epoch_batches(
    source: ExampleSource, plan: EpochPlan, world: int, rank: int, seed: int, epoch: int
) -> Iterator[tuple[Examples, np.ndarray]]:
    """This rank's ``plan.steps`` batches of ``epoch``: ``(window examples, rows of one batch in them)``."""
    n, block, batch = len(source), plan.block, plan.batch
    starts = np.arange(0, n, block)
    mine = np.random.default_rng([seed, epoch]).permutation(len(starts))[rank::world]
    rows_rng = np.random.default_rng([seed, epoch, rank])
    done, carry = 0, None  # carry: the rows left over from the previous window (less than a batch)
    for w in range(0, len(mine), WINDOW):
        window = source.blocks([(int(starts[b]), int(min(starts[b] + block, n))) for b in mine[w : w + WINDOW]])
        if carry is not None:
            window = _concat(carry, window)
        order = rows_rng.permutation(len(window))
        whole = len(order) // batch
        for s in range(whole):
            if done == plan.steps:
                return
            yield window, order[s * batch : (s + 1) * batch]
            done += 1
        rest = order[whole * batch :]
        # Compacted: a carry that kept its window's whole sequence would chain every window of the epoch.
        carry = _compact(window, rest) if len(rest) else None


def _take(ex: Examples, rows: np.ndarray) -> Examples:
    return Examples(ex.seq, ex.hist_start[rows], ex.hist_len[rows], ex.target[rows], ex.user_row[rows])


def _compact(ex: Examples, rows: np.ndarray) -> Examples:
    """The examples at ``rows`` with a sequence of just their own histories."""
    lengths = ex.hist_len[rows]
    seq = gather_windows(ex.seq, ex.hist_start[rows], lengths)
    return Examples(seq, np.cumsum(lengths) - lengths, lengths, ex.target[rows], ex.user_row[rows])


def _concat(a: Examples, b: Examples) -> Examples:
    """Two example sets as one (``b``'s history windows shifted past ``a``'s sequence)."""
    return Examples(
        np.concatenate([a.seq, b.seq]),
        np.concatenate([a.hist_start, b.hist_start + len(a.seq)]),
        np.concatenate([a.hist_len, b.hist_len]),
        np.concatenate([a.target, b.target]),
        np.concatenate([a.user_row, b.user_row]),
    )


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Store:
    """An opened example store: its directory and ``store.json``."""

    root: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> Store:
        root = Path(root)
        try:
            meta = json.loads((root / "store.json").read_text())
        except (OSError, ValueError) as e:
            raise DataValidationError(f"{root}: not a two-tower example store ({e}); re-run the two-tower job") from e
        if meta.get("format") != STORE_FORMAT:
            raise DataValidationError(f"{root}: example store format {meta.get('format')!r}, expected {STORE_FORMAT!r}")
        return cls(root, meta)

    def examples(self) -> ExampleFiles:
        return ExampleFiles(self.root)

    def items(self) -> Vocab:
        return Vocab.load(self.root / "items.parquet")

    def validation_arrays(self) -> dict[str, Any]:
        """Validation's fields: per-user arrays in memory, ``seq`` (all train items) read per block of users."""
        out: dict[str, Any] = {
            f: NpyFile(self.root / f"validation_{f}.npy").all().astype(np.int64)
            for f in VALIDATION_FIELDS
            if f != "seq"
        }
        return {**out, "seq": NpyFile(self.root / "validation_seq.npy")}

    def serving_histories(self) -> tuple[NpyFile, np.ndarray, pl.Series]:
        """``(seq on disk, offsets [U + 1], user_ids [U])``: each user's latest items over all events."""
        users = pl.read_parquet(self.root / "serve_users.parquet")["user_id"]
        return NpyFile(self.root / "serve_seq.npy"), NpyFile(self.root / "serve_offsets.npy").all(), users


def _save(path: Path, array: np.ndarray, dtype: Any) -> None:
    np.save(path, np.ascontiguousarray(array, dtype=dtype))


def _index_dtype(n: int) -> Any:
    return np.int32 if n < 2**31 else np.int64


def write_store(
    out: Path,
    examples: Examples,
    validation: dict[str, np.ndarray],
    serving: tuple[np.ndarray, np.ndarray, np.ndarray],
    items: Vocab,
    meta: dict[str, Any],
) -> Path:
    """Write a store to ``out`` (replaced atomically); ``meta`` goes into ``store.json``."""
    with atomic_dir(out) as tmp:
        pos = _index_dtype(len(examples.seq))
        _save(tmp / "examples_seq.npy", examples.seq, _index_dtype(len(items)))
        _save(tmp / "examples_hist_start.npy", examples.hist_start, pos)
        _save(tmp / "examples_hist_len.npy", examples.hist_len, np.int32)
        _save(tmp / "examples_target.npy", examples.target, _index_dtype(len(items)))
        _save(tmp / "examples_user_row.npy", examples.user_row, np.int64)
        np.save(tmp / "trained_items.npy", InMemoryExamples(examples).trained_items(len(items)))
        for f in VALIDATION_FIELDS:
            _save(tmp / f"validation_{f}.npy", validation[f], _index_dtype(len(items)) if f == "seq" else np.int64)
        seq, offsets, users = serving
        _save(tmp / "serve_seq.npy", seq, _index_dtype(len(items)))
        _save(tmp / "serve_offsets.npy", offsets, np.int64)
        pl.DataFrame({"user_id": pl.Series(users, dtype=pl.String)}).write_parquet(tmp / "serve_users.parquet")
        items.save(tmp / "items.parquet")
        write_json(tmp / "store.json", {"format": STORE_FORMAT, "examples": len(examples), **meta})
    return out
