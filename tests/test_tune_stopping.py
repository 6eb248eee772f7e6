"""Early stopping against the best completed trial (recemb.tune.stopping), alone and inside Ray Tune."""

from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import TrialScheduler

from recemb.tune.config import TuneConfig
from recemb.tune.noise import standard_error, trails
from recemb.tune.stopping import TrailingBest

RUNGS = [10, 30, 100]


def _report(score: float, epoch: int, epochs: int, queries: int = 943) -> dict:
    return {
        "score": score,
        "epoch": epoch,
        "epochs": epochs,
        "progress": round(100 * epoch / epochs),
        "scored_rows": queries,
    }


def test_the_margin_is_the_binomial_bound_of_the_references_standard_error():
    assert standard_error(0.25, 100) == pytest.approx(math.sqrt(0.25 * 0.75 / 100))
    assert standard_error(0.0, 100) == 0.0 and standard_error(0.5, 0) == math.inf
    se = standard_error(0.22, 943)  # ~0.0135
    assert trails(0.22 - 1.1 * se, 0.22, 943, margin=1.0)
    assert not trails(0.22 - 0.9 * se, 0.22, 943, margin=1.0)
    assert not trails(0.10, 0.22, 0, margin=1.0)  # no query count: nothing to measure noise by, never stopped
    assert trails(0.2199, 0.22, 943, margin=0.0)  # margin 0: any shortfall stops


def test_nothing_is_stopped_before_a_trial_completes_then_what_trails_the_best_beyond_noise_is():
    s = TrailingBest(RUNGS, margin=1.0, metric="score")
    assert s.judge("a", _report(0.05, 1, 10)) == TrialScheduler.CONTINUE  # no completed trial yet
    for epoch, score in [(3, 0.20), (10, 0.26)]:
        assert s.judge("a", _report(score, epoch, 10)) == TrialScheduler.CONTINUE
    s.complete("a", _report(0.26, 10, 10))  # a's rung scores: 10% 0.05, 30% 0.20
    se = standard_error(0.20, 943)
    assert s.judge("close", _report(0.05 - 0.001, 1, 10)) == TrialScheduler.CONTINUE  # within noise at 10%
    assert s.judge("close", _report(0.20 - 0.5 * se, 3, 10)) == TrialScheduler.CONTINUE
    assert s.judge("far", _report(0.05, 1, 10)) == TrialScheduler.CONTINUE
    assert s.judge("far", _report(0.20 - 2 * se, 3, 10)) == TrialScheduler.STOP
    # A shorter trial's first report is past two rungs: it is judged at the later one, against a's 30% score.
    assert s.judge("short", _report(0.21, 1, 2)) == TrialScheduler.CONTINUE
    assert s.judge("short2", _report(0.15, 1, 2)) == TrialScheduler.STOP
    assert s.judge("any", _report(0.01, 10, 10)) == TrialScheduler.CONTINUE  # the last report is never judged


def test_only_a_completed_trial_that_beats_the_best_becomes_the_reference():
    s = TrailingBest(RUNGS, margin=1.0, metric="score")
    s.judge("a", _report(0.10, 1, 10))
    s.complete("a", _report(0.30, 10, 10))
    s.judge("stopped", _report(0.50, 1, 10))
    s.complete("stopped", _report(0.50, 1, 10))  # cut short (budget or scheduler): not a reference
    s.judge("worse", _report(0.40, 1, 10))
    s.complete("worse", _report(0.20, 10, 10))  # completed but worse in the end
    assert s.judge("b", _report(0.10, 1, 10)) == TrialScheduler.CONTINUE  # still a's 0.10 at 10%
    assert s.judge("c", _report(0.02, 1, 10)) == TrialScheduler.STOP
    s.judge("better", _report(0.40, 1, 10))
    s.complete("better", _report(0.35, 10, 10))
    assert s.judge("d", _report(0.10, 1, 10)) == TrialScheduler.STOP  # now judged against 0.40


def test_a_restored_search_stops_against_the_best_it_had_before(tmp_path):
    """Ray Tune restores the scheduler as it was built, empty: the reference comes back from its state file."""
    state = tmp_path / "trailing.json"
    before = TrailingBest(RUNGS, margin=1.0, metric="score", state_file=state)
    before.judge("a", _report(0.20, 1, 10))
    before.complete("a", _report(0.30, 10, 10))
    restored = TrailingBest(RUNGS, margin=1.0, metric="score", state_file=state)
    assert restored.judge("far", _report(0.10, 1, 10)) == TrialScheduler.STOP
    assert restored.judge("close", _report(0.195, 1, 10)) == TrialScheduler.CONTINUE
    restored.complete("close", _report(0.29, 10, 10))  # completed but below the restored best: not a reference
    restored.complete("better", _report(0.35, 10, 10))  # no rung scores seen (reported past them): the new best
    assert (
        TrailingBest(RUNGS, margin=1.0, metric="score", state_file=state).judge("far2", _report(0.10, 1, 10))
        == TrialScheduler.CONTINUE
    )  # the new reference has no 10% score to compare with
    in_memory = TrailingBest(RUNGS, margin=1.0, metric="score")
    assert in_memory.judge("far", _report(0.10, 1, 10)) == TrialScheduler.CONTINUE


def test_auto_stops_local_steps_against_the_best_and_random_draws_with_asha():
    assert TuneConfig().stopping == "trailing"  # the hybrid is the default
    assert TuneConfig(searcher="random").stopping == "asha"
    assert TuneConfig(searcher="local").stopping == "trailing"
    assert TuneConfig(searcher="local", scheduler="asha").stopping == "asha"
    assert TuneConfig(scheduler="fifo").stopping == "fifo"


@pytest.mark.slow
def test_ray_tune_stops_a_trial_that_trails_the_completed_one(ray_local, tmp_path):
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    def trainable(config: dict) -> None:
        for epoch in range(1, 11):  # a learning curve scaled by the setting's quality (no test-module names:
            # Ray's workers cannot import this module)
            score = config["quality"] * epoch / 10
            tune.report({"score": score, "epoch": epoch, "epochs": 10, "progress": 10 * epoch, "scored_rows": 1000})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 2}),  # one at a time: the good setting completes first
        param_space={"quality": tune.choice([0.0])},
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            num_samples=3,
            scheduler=TrailingBest(RUNGS, margin=1.0, metric="score"),
            search_alg=BasicVariantGenerator(
                points_to_evaluate=[{"quality": 0.5}, {"quality": 0.49}, {"quality": 0.1}]
            ),
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="stop", verbose=0),
    )
    grid = tuner.fit()
    epochs = {r.config["quality"]: r.metrics["epoch"] for r in grid}
    assert epochs == {0.5: 10, 0.49: 10, 0.1: 1}, epochs  # the close one runs on, the far one stops at 10%
