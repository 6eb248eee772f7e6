"""The local searcher of `recemb tune` (recemb.tune.local): its steps, its walk, its resume, and a run on Ray Tune."""

from __future__ import annotations

import math

import polars as pl
import pytest
import yaml
from ray.tune.search import Searcher

from recemb.tune.local import LocalSearch, neighbours
from recemb.tune.space import contains

SPACE = {
    "epochs": {"lograndint": [5, 200]},
    "alpha": {"loguniform": [0.005, 0.1]},
    "ns_exponent": {"uniform": [-1.0, 1.0]},
    "negatives": {"randint": [2, 20]},
    "window": {"choice": [1, 2, 3, 5, 10, 20, 0]},
}
START = {"epochs": 10, "alpha": 0.025, "ns_exponent": 0.75, "negatives": 5, "window": 5}


def test_a_step_moves_one_setting_by_its_dimensions_scale():
    steps = {move: params for params, move in neighbours(SPACE, START)}
    assert steps[("epochs", -1)]["epochs"] == 5 and steps[("epochs", 1)]["epochs"] == 20  # x2 / /2 on a log scale
    assert steps[("alpha", 1)]["alpha"] == 0.05
    assert steps[("ns_exponent", 1)]["ns_exponent"] == 1.0  # a quarter of the range, clipped at the top
    assert steps[("ns_exponent", -1)]["ns_exponent"] == 0.25
    assert steps[("negatives", 1)]["negatives"] == 10  # a positive integer range steps x2 too
    assert steps[("window", -1)]["window"] == 3 and steps[("window", 1)]["window"] == 10  # adjacent choices
    for params in steps.values():  # one setting changed, the rest kept
        assert sum(params[k] != START[k] for k in START) == 1
    edge = {**START, "epochs": 200, "window": 0}
    moves = {move for _, move in neighbours(SPACE, edge)}
    assert ("epochs", 1) not in moves and ("window", 1) not in moves  # no step out of a dimension
    assert ("window", -1) in moves  # declared order: 0 (the whole session) comes after 20


def test_steps_into_a_narrowed_range_and_the_step_that_paid_come_first():
    outside = {**START, "negatives": 40}  # the space was narrowed below the configured value
    first_params, first_move = neighbours(SPACE, outside)[0]
    assert first_move == ("negatives", -1) and first_params["negatives"] == 20
    assert neighbours(SPACE, START, first=("window", 1))[0][1] == ("window", 1)


def _objective(params: dict) -> float:
    """A smooth validation score, best at epochs 80, alpha 0.05, ns_exponent 0.25, window 10 (all on the step grid)."""
    return -(
        (math.log2(params["epochs"] / 80)) ** 2
        + (math.log2(params["alpha"] / 0.05)) ** 2
        + (params["ns_exponent"] - 0.25) ** 2
        + (0.0 if params["window"] == 10 else 0.5)
    )


def _walk(searcher: LocalSearch, workers: int = 2, limit: int = 200) -> list[dict]:
    """Drive ``searcher`` like Ray Tune: ``workers`` trials in flight, finished oldest first."""
    running: list[tuple[str, dict]] = []
    tried: list[dict] = []
    n = 0
    while n < limit:
        while len(running) < workers:
            params = searcher.suggest(f"t{n}")
            if params is None or params == Searcher.FINISHED:
                break
            running.append((f"t{n}", params))
            tried.append(params)
            n += 1
        if not running:
            return tried
        trial_id, params = running.pop(0)
        searcher.on_trial_complete(trial_id, {"score": _objective(params), "epoch": 1, "epochs": 1})
    raise AssertionError(f"the walk did not end within {limit} trials")


def test_the_walk_climbs_to_a_local_optimum_and_ends_there():
    searcher = LocalSearch(SPACE, START, metric="score")
    tried = _walk(searcher)
    assert tried[0] == START  # the configured setting first
    keys = [tuple(sorted(p.items())) for p in tried]
    assert len(keys) == len(set(keys)), "a setting was tried twice"
    best = max(tried, key=_objective)
    assert best["epochs"] == 80 and best["alpha"] == 0.05 and best["ns_exponent"] == 0.25 and best["window"] == 10
    assert _walk(searcher) == []  # ended: FINISHED from then on
    assert len(tried) < 60  # a walk, not an enumeration of the grid of steps


def test_trials_stopped_early_or_failed_never_become_the_centre():
    searcher = LocalSearch({"epochs": {"lograndint": [5, 200]}}, {"epochs": 20}, metric="score")
    start, down, up = (searcher.suggest(t) for t in ("a", "b", "c"))
    assert (start["epochs"], down["epochs"], up["epochs"]) == (20, 10, 40)
    searcher.on_trial_complete("a", {"score": 0.1, "epoch": 20, "epochs": 20})
    searcher.on_trial_complete("b", {"score": 0.9, "epoch": 3, "epochs": 10})  # stopped by ASHA at 30%
    searcher.on_trial_complete("c", None, error=True)
    assert searcher.suggest("d") == Searcher.FINISHED  # the start stays best: its neighbours are all tried


@pytest.mark.parametrize("draws", [0, 3], ids=["local", "hybrid"])
def test_an_interrupted_walk_resumes_from_its_saved_state(tmp_path, draws):
    first = LocalSearch(SPACE, START, metric="score", random_draws=draws)
    for n in range(5):
        params = first.suggest(f"t{n}")
        first.on_trial_complete(f"t{n}", {"score": _objective(params), "epoch": 1, "epochs": 1})
    pending = first.suggest("t5")
    first.save(str(tmp_path / "searcher.json"))
    again = LocalSearch(SPACE, START, metric="score", random_draws=draws)
    again.restore(str(tmp_path / "searcher.json"))
    assert again.suggest("t6") == first.suggest("t6")
    for s in (first, again):  # the trial in flight at the crash finishes after the restore
        s.on_trial_complete("t5", {"score": _objective(pending), "epoch": 1, "epochs": 1})
    assert _walk(first) == _walk(again)


@pytest.mark.slow
def test_local_search_on_ray_tune_walks_from_the_configured_setting_and_ends_by_itself(ray_local, tmp_path):
    from recemb.config import build_config
    from recemb.tune.search import tune_run

    settings = {"ns_exponent": 0.75, "window": 5, "sample": 1e-3, "negatives": 5, "alpha": 0.025, "dim": 16}
    pinned = {key: {"choice": [value]} for key, value in settings.items()}  # a one-value choice has no step
    cfg = build_config(
        {
            "run": {"name": "t", "dir": str(tmp_path)},
            "data": {"source": "synth", "synth": {"users": 150, "items": 60, "events": 4000, "impressions": 0}},
            "eval": {"protocols": ["ml"], "k": [20], "models": ["item2vec"]},
            "item2vec": {**settings, "epochs": 1, "threads": 1},  # too few epochs
            "tune": {
                "searcher": "local",
                "trials": 20,
                "time_budget": None,
                "spaces": {"item2vec": {**pinned, "epochs": {"lograndint": [1, 8]}}},
            },
        }
    )
    summary = tune_run(cfg)
    trials = pl.read_parquet(tmp_path / "t" / "tune" / "trials.parquet")
    # The only searched setting is epochs: 1 -> 2 -> 4 -> 8 at most, then no step is left.
    assert 2 <= trials.height <= 4, trials
    assert trials.filter(pl.col("default"))["params"].str.contains('"epochs": 1').all()
    best = yaml.safe_load((tmp_path / "t" / "tune" / "best.yaml").read_text())
    s = summary["models"]["item2vec"]
    assert best["item2vec"]["epochs"] > 1 and s["best_score"] > s["default_score"], s


def test_no_step_is_started_that_would_outlast_the_time_budget():
    # The configured trial takes 60 s and 20 s are left: only the start runs (it is the baseline)...
    searcher = LocalSearch(SPACE, START, metric="score", trial_seconds=60, budget_seconds=20)
    assert searcher.suggest("a") == START
    assert searcher.suggest("b") is None  # ... the rest would not end in time: wait for the start, then stop
    searcher.on_trial_complete("a", {"score": 0.5, "epoch": 10, "epochs": 10})
    assert searcher.suggest("c") == Searcher.FINISHED
    # With 100 s left, a step to 5 epochs (~30 s) fits, one to 20 epochs (~120 s) does not.
    roomier = LocalSearch({"epochs": SPACE["epochs"]}, START, metric="score", trial_seconds=60, budget_seconds=100)
    assert roomier.suggest("a") == START and roomier.suggest("b")["epochs"] == 5
    assert roomier.suggest("c") is None


def test_the_hybrid_draws_from_the_whole_space_then_walks_from_the_best_it_has():
    far = {"epochs": 5, "alpha": 0.005, "ns_exponent": -1.0, "negatives": 2, "window": 1}  # far from the optimum
    searcher = LocalSearch(SPACE, far, metric="score", random_draws=8, seed=3)
    tried = _walk(searcher, workers=1)
    assert tried[0] == far
    draws, walk = tried[1:9], tried[9:]
    assert all(contains(SPACE, d) for d in draws)
    assert all(sum(d[k] != far[k] for k in far) > 1 for d in draws), "a draw looks like a step from the start"
    best_so_far = max(tried[:9], key=_objective)
    assert best_so_far != far  # (with this seed a draw beats the poor start)
    steps = {tuple(sorted(p.items())) for p, _ in neighbours(SPACE, best_so_far)}
    assert tuple(sorted(walk[0].items())) in steps  # the walk starts from the best draw, not the start
    assert max(map(_objective, walk)) > _objective(best_so_far)  # and climbs from there
    again = LocalSearch(SPACE, far, metric="score", random_draws=8, seed=3)
    assert _walk(again, workers=1) == tried  # the searcher's seed fixes its draws


def test_the_hybrid_walks_once_its_share_of_the_time_budget_is_spent():
    searcher = LocalSearch(
        SPACE, START, metric="score", trial_seconds=1, budget_seconds=1000, random_draws=10, explore_share=0.0
    )
    assert searcher.suggest("a") == START
    step = searcher.suggest("b")
    assert sum(step[k] != START[k] for k in START) == 1  # a step, not a draw
