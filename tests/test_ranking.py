"""Tests of recemb.eval.ranking: target ranks, top-k and masking (DESIGN.md §7)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import recemb.eval.ranking as ranking
from recemb.errors import RecembError
from recemb.eval.ranking import apply_mask, target_ranks, topk

NEG = -np.inf


def _reference_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Ranks of tie-free rows from a full sort: 1 + position of the target in argsort desc."""
    order = np.argsort(-scores, axis=1)
    return (np.argmax(order == targets[:, None], axis=1) + 1).astype(np.float64)


# --------------------------------------------------------------------------- target_ranks


def test_target_ranks_by_hand() -> None:
    scores = np.array(
        [
            [0.1, 0.5, 0.3, 0.9],  # target 2 (0.3): beaten by 0.5 and 0.9 -> rank 3
            [0.1, 0.5, 0.3, 0.9],  # target 3 (0.9): best -> rank 1
            [0.1, 0.5, 0.3, 0.9],  # target -1: not in the catalogue -> inf
            [0.1, NEG, 0.3, 0.9],  # target 1 is masked -> inf
        ],
        dtype=np.float32,
    )
    ranks = target_ranks(scores, np.array([2, 3, -1, 1]), np.random.default_rng(0))
    assert ranks.dtype == np.float64
    np.testing.assert_array_equal(ranks, [3.0, 1.0, np.inf, np.inf])


def test_target_ranks_match_full_sort_without_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((64, 500)).astype(np.float32)
    targets = rng.integers(0, 500, 64)
    np.testing.assert_array_equal(
        target_ranks(scores, targets, np.random.default_rng(2)), _reference_ranks(scores, targets)
    )


def test_all_equal_scores_give_uniform_ranks() -> None:
    # Every item ties with the target: rank must be uniform on 1..N, mean (N+1)/2 = 5.5.
    n, b = 10, 20_000
    scores = np.zeros((b, n), dtype=np.float32)
    ranks = target_ranks(scores, np.zeros(b, dtype=np.int64), np.random.default_rng(3))
    assert set(np.unique(ranks)) == set(range(1, n + 1))
    assert abs(ranks.mean() - (n + 1) / 2) < 0.05  # std of the mean = 2.87 / sqrt(2e4) = 0.02
    counts = np.bincount(ranks.astype(int))[1:]
    assert counts.min() > 0.9 * b / n and counts.max() < 1.1 * b / n  # ~7 sigma band


def test_partial_ties_land_inside_the_tie_group() -> None:
    # Row [3, 2, 2, 2, 1], target item 2 (score 2): one item better, two others tie,
    # so rank is uniform on {2, 3, 4}.
    scores = np.tile(np.array([3, 2, 2, 2, 1], dtype=np.float32), (3000, 1))
    ranks = target_ranks(scores, np.full(3000, 2), np.random.default_rng(4))
    assert set(np.unique(ranks)) == {2.0, 3.0, 4.0}
    assert abs(ranks.mean() - 3.0) < 0.06  # std of the mean = 0.816 / sqrt(3000) = 0.015


def test_target_ranks_deterministic_by_seed() -> None:
    scores = np.round(np.random.default_rng(5).random((100, 50)), 1).astype(np.float32)
    targets = np.arange(100) % 50
    a = target_ranks(scores, targets, np.random.default_rng(7))
    b = target_ranks(scores, targets, np.random.default_rng(7))
    c = target_ranks(scores, targets, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # many ties: another seed must change something


def test_target_ranks_blocking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.round(np.random.default_rng(6).random((37, 40)), 1).astype(np.float32)
    targets = np.arange(37) % 40
    whole = target_ranks(scores, targets, np.random.default_rng(9))
    monkeypatch.setattr(ranking, "_BLOCK_ELEMS", 3 * 40)  # blocks of 3 rows
    np.testing.assert_array_equal(whole, target_ranks(scores, targets, np.random.default_rng(9)))


@pytest.mark.parametrize(
    ("scores", "targets", "match"),
    [
        (np.zeros((2, 3), np.float32), np.array([0, 3]), "outside the catalogue"),
        (np.zeros((2, 3), np.float32), np.array([0, -2]), "outside the catalogue"),
        (np.zeros((2, 3), np.float32), np.array([0]), "shape"),
        (np.zeros(3, np.float32), np.array([0]), "2-D"),
        (np.zeros((2, 3), np.int64), np.array([0, 1]), "float"),
        (np.array([[0, np.nan, 1], [0, 0, 0]], np.float32), np.array([0, 1]), "row 0 contains NaN"),
    ],
)
def test_target_ranks_rejects_bad_input(scores, targets, match) -> None:
    with pytest.raises(RecembError, match=match):
        target_ranks(scores, targets, np.random.default_rng(0))


@pytest.mark.slow
def test_target_ranks_memory_on_4096_by_100k() -> None:
    # The brief's size: the temporaries must stay far below the 1.6 GB score matrix.
    rng = np.random.default_rng(10)
    scores = rng.standard_normal((4096, 100_000), dtype=np.float32)
    targets = rng.integers(0, 100_000, 4096)
    tracemalloc.start()
    ranks = target_ranks(scores, targets, rng)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < scores.nbytes / 20
    sub = slice(0, 64)
    np.testing.assert_array_equal(ranks[sub], _reference_ranks(scores[sub], targets[sub]))


# --------------------------------------------------------------------------- topk


@pytest.fixture(params=["torch", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through torch.topk and through the numpy argpartition fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(ranking, "_torch", None)
    elif ranking._torch is None:
        pytest.skip("torch is not installed")
    return request.param


def test_topk_by_hand(backend: str) -> None:
    scores = np.array([[0.1, 0.7, 0.3, 0.9, NEG], [5.0, 4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    idx, val = topk(scores, 3)
    np.testing.assert_array_equal(idx, [[3, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(val, np.float32([[0.9, 0.7, 0.3], [5.0, 4.0, 3.0]]))
    assert idx.dtype == np.int64 and val.dtype == np.float32


def test_topk_matches_full_sort(backend: str) -> None:
    rng = np.random.default_rng(11)
    scores = rng.standard_normal((50, 300)).astype(np.float32)
    full = np.argsort(-scores, axis=1)[:, :20]
    for r in (None, np.random.default_rng(12)):
        idx, val = topk(scores, 20, r)
        np.testing.assert_array_equal(idx, full)
        np.testing.assert_array_equal(val, np.take_along_axis(scores, full, axis=1))


def test_topk_k_larger_than_catalogue_and_masked_tail(backend: str) -> None:
    scores = np.array([[1.0, NEG, 2.0]], dtype=np.float32)
    idx, val = topk(scores, 10)
    np.testing.assert_array_equal(idx, [[2, 0, 1]])
    np.testing.assert_array_equal(val, [[2.0, 1.0, NEG]])


def test_topk_without_rng_orders_ties_by_index(backend: str) -> None:
    scores = np.array([[1.0, 2.0, 1.0, 2.0, 0.0]], dtype=np.float32)
    idx, _ = topk(scores, 5)
    np.testing.assert_array_equal(idx, [[1, 3, 0, 2, 4]])


def test_topk_random_tie_breaking_is_uniform(backend: str) -> None:
    # Row [5, 1, 1, 1, 1, 0], k = 3: item 0 first, then 2 of the 4 tied items {1..4},
    # each chosen with probability 2/4, each list position equally likely.
    b = 8000
    scores = np.tile(np.array([5, 1, 1, 1, 1, 0], dtype=np.float32), (b, 1))
    idx, val = topk(scores, 3, np.random.default_rng(13))
    assert (idx[:, 0] == 0).all()
    np.testing.assert_array_equal(val, np.tile([5.0, 1.0, 1.0], (b, 1)))
    assert (idx[:, 1] != idx[:, 2]).all() and np.isin(idx[:, 1:], [1, 2, 3, 4]).all()
    chosen = np.bincount(idx[:, 1:].ravel(), minlength=6)[1:5] / b
    np.testing.assert_allclose(chosen, 0.5, atol=0.03)  # std = sqrt(.25 / 8000) = 0.006
    second = np.bincount(idx[:, 1], minlength=6)[1:5] / b
    np.testing.assert_allclose(second, 0.25, atol=0.03)


def test_topk_random_ties_inside_list_and_mixed_rows(backend: str) -> None:
    # Row 0 has no tie at the cut but ties inside the list: both orders must occur.
    # Row 1 is tie-free and must come out exactly sorted whatever the rng.
    b = 400
    scores = np.tile(np.array([[2, 2, 1, 0], [0.4, 0.1, 0.3, 0.2]], dtype=np.float32), (b, 1))
    idx, _ = topk(scores, 3, np.random.default_rng(14))
    tied = idx[0::2]
    np.testing.assert_array_equal(tied[:, 2], 2)
    firsts = np.bincount(tied[:, 0], minlength=2)
    assert firsts[0] > 0.4 * b and firsts[1] > 0.4 * b
    np.testing.assert_array_equal(idx[1::2], np.tile([0, 2, 3], (b, 1)))


def test_topk_deterministic_by_seed() -> None:
    scores = np.round(np.random.default_rng(15).random((30, 40)), 1).astype(np.float32)
    a = topk(scores, 5, np.random.default_rng(1))[0]
    b = topk(scores, 5, np.random.default_rng(1))[0]
    np.testing.assert_array_equal(a, b)


def test_topk_rejects_bad_k_and_nan() -> None:
    with pytest.raises(RecembError, match="positive integer"):
        topk(np.zeros((1, 3), np.float32), 0)
    with pytest.raises(RecembError, match="NaN"):
        topk(np.array([[np.nan, 1.0]], np.float32), 1)


# --------------------------------------------------------------------------- apply_mask


def test_apply_mask_by_hand() -> None:
    scores = np.arange(6, dtype=np.float32).reshape(2, 3)
    apply_mask(scores, np.array([0, 1, 1, 1]), np.array([2, 0, 1, 0]))  # duplicate (1, 0) is fine
    np.testing.assert_array_equal(scores, [[0, 1, NEG], [NEG, NEG, 5]])


def test_apply_mask_then_rank() -> None:
    # Masking the better item of the row moves the target from rank 2 to rank 1.
    scores = np.array([[0.9, 0.5, 0.1]], dtype=np.float32)
    apply_mask(scores, np.array([0]), np.array([0]))
    assert target_ranks(scores, np.array([1]), np.random.default_rng(0))[0] == 1.0


def test_apply_mask_rejects_bad_input() -> None:
    scores = np.zeros((2, 3), np.float32)
    with pytest.raises(RecembError, match=r"\(row 0, col 3\)"):
        apply_mask(scores, np.array([0]), np.array([3]))
    with pytest.raises(RecembError, match="equal length"):
        apply_mask(scores, np.array([0, 1]), np.array([0]))
    frozen = np.zeros((2, 3), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(RecembError, match="read-only"):
        apply_mask(frozen, np.array([0]), np.array([0]))
