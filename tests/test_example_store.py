"""The two-tower example store: the epoch order over blocks, reading blocks from disk, damage, reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError
from recemb.models.two_tower import example_store as es
from recemb.models.two_tower.features import Examples


def _examples(users: int = 300, seed: int = 0) -> Examples:
    """Random user-major histories: every position after the first is a target with up to 5 earlier items."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 30, users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    seq = rng.integers(0, 50, int(offsets[-1]))
    owner = np.repeat(np.arange(users), lengths)
    pos = np.arange(len(seq)) - offsets[owner]
    ex = np.flatnonzero(pos >= 1)
    hist_len = np.minimum(pos[ex], 5)
    return Examples(seq, ex - hist_len, hist_len, seq[ex], owner[ex])


def _rows_seen(source, plan, world, rank, epoch):
    """Per batch: (history tuple, target, user_row) of every example, in order."""
    out = []
    for window, rows in es.epoch_batches(source, plan, world, rank, seed=3, epoch=epoch):
        for r in rows:
            start, length = window.hist_start[r], window.hist_len[r]
            out.append((tuple(window.seq[start : start + length]), int(window.target[r]), int(window.user_row[r])))
    return out


def _identity(ex: Examples) -> list[tuple]:
    return [
        (tuple(ex.seq[s : s + n]), int(t), int(u))
        for s, n, t, u in zip(ex.hist_start, ex.hist_len, ex.target, ex.user_row)
    ]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_runs_the_same_steps_and_no_example_twice(world, monkeypatch):
    monkeypatch.setattr(es, "BLOCK", 97)  # many blocks, a short last one
    monkeypatch.setattr(es, "WINDOW", 3)
    ex = _examples()
    plan = es.EpochPlan.of(len(ex), world, 64)
    assert plan.block == 97 and plan.steps > 0
    source = es.InMemoryExamples(ex)
    universe = _identity(ex)
    for epoch in range(2):
        seen = [_rows_seen(source, plan, world, rank, epoch) for rank in range(world)]
        assert all(len(s) == plan.steps * plan.batch for s in seen)
        # examples are told apart by their position: count each identity no more often than it exists
        counts: dict[tuple, int] = {}
        for s in seen:
            for key in s:
                counts[key] = counts.get(key, 0) + 1
        available: dict[tuple, int] = {}
        for key in universe:
            available[key] = available.get(key, 0) + 1
        assert all(counts[k] <= available.get(k, 0) for k in counts)
        # whole epoch but the rounding at the end: at most a block and a batch per rank left out
        assert sum(len(s) for s in seen) >= len(ex) - world * (plan.block + plan.batch)
    assert _rows_seen(source, plan, world, 0, 0) != _rows_seen(source, plan, world, 0, 1)  # reshuffled per epoch


def test_blocks_read_from_disk_are_the_examples_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(es, "BLOCK", 101)
    monkeypatch.setattr(es, "WINDOW", 2)
    ex = _examples(seed=1)
    validation = {f: np.arange(4) for f in es.VALIDATION_FIELDS}
    serving = (np.arange(6), np.array([0, 2, 6]), np.array(["u1", "u2"], dtype=object))
    store = es.write_store(tmp_path / "store", ex, validation, serving, Vocab([str(i) for i in range(50)]), {"k": 1})
    opened = es.Store.open(store)
    files = opened.examples()
    assert len(files) == len(ex) and opened.meta["examples"] == len(ex) and opened.meta["k"] == 1
    plan = es.EpochPlan.of(len(ex), 2, 32)
    for rank in range(2):
        assert _rows_seen(files, plan, 2, rank, 0) == _rows_seen(es.InMemoryExamples(ex), plan, 2, rank, 0)
    # a window holds only the part of the sequence its histories use
    window = files.blocks([(0, 101)])
    assert len(window.seq) <= int(ex.hist_start[100] + ex.hist_len[100] - ex.hist_start[0])
    seq, offsets, users = opened.serving_histories()
    assert seq.all().tolist() == list(range(6)) and offsets.tolist() == [0, 2, 6] and users.to_list() == ["u1", "u2"]
    trained = np.zeros(50, dtype=bool)
    trained[ex.target] = True
    assert np.array_equal(files.trained_items(50), trained)


def test_a_damaged_store_is_refused_with_how_to_fix(tmp_path):
    ex = _examples(users=20)
    validation = {f: np.arange(3) for f in es.VALIDATION_FIELDS}
    serving = (np.arange(2), np.array([0, 2]), np.array(["u"], dtype=object))
    store = es.write_store(tmp_path / "s", ex, validation, serving, Vocab([str(i) for i in range(50)]), {})
    np.save(store / "examples_target.npy", np.zeros(3, np.int32))  # shorter than the other arrays
    with pytest.raises(DataValidationError, match="re-run the two-tower job"):
        es.Store.open(store).examples()
    (store / "store.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataValidationError, match="format"):
        es.Store.open(store)
    with pytest.raises(DataValidationError, match="re-run the two-tower job"):
        es.Store.open(tmp_path / "missing")


def test_a_window_read_from_disk_holds_its_own_blocks_only_however_long_the_epoch(tmp_path, monkeypatch):
    """Rows left over at the end of a window go into the next one; they must not bring the previous
    window's whole sequence along (that chained every window of an epoch: memory grew with the events)."""
    monkeypatch.setattr(es, "BLOCK", 40)
    monkeypatch.setattr(es, "WINDOW", 2)
    ex = _examples(users=600, seed=2)
    validation = {f: np.arange(3) for f in es.VALIDATION_FIELDS}
    serving = (np.arange(2), np.array([0, 2]), np.array(["u"], dtype=object))
    store = es.write_store(tmp_path / "s", ex, validation, serving, Vocab([str(i) for i in range(50)]), {})
    plan = es.EpochPlan.of(len(ex), 1, 48)  # 48 does not divide a window: every window leaves a carry
    spans = [
        int((ex.hist_start[a:b] + ex.hist_len[a:b]).max() - ex.hist_start[a:b].min())
        for a, b in ((a, min(a + 40, len(ex))) for a in range(0, len(ex), 40))
    ]
    bound = es.WINDOW * max(spans) + plan.batch * int(ex.hist_len.max())
    sizes = [len(window.seq) for window, _ in es.epoch_batches(es.Store.open(store).examples(), plan, 1, 0, 0, 0)]
    assert len(sizes) == plan.steps > 100 and max(sizes) <= bound
