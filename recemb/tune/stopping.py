"""Early stopping measured against the best completed trial: stop a trial that trails it beyond noise.

Why not ASHA for the local searcher: ASHA keeps the best ``1 / rf`` of the
trials at each rung, whatever their distance. That fits random draws, most of
which are far worse than the best. The local searcher's trials are one step
from a good setting, so they score close to it, and ranking them on early
scores kills good steps at random: ML-100K (stop 26), 8 of 10 two-tower
steps were stopped after the first of their 4 epochs, at scores within 0.01
of the configured setting's score at that point.

The rule here: at each rung (a share of the trial's own epochs, the same
rungs as ASHA's), compare the trial's score with the score the best completed
trial had at that rung, and stop it when it trails by more than ``margin``
standard errors of that score (bounded as in recemb.tune.noise). Until a
trial completes nothing is stopped.

Ray Tune's experiment restore brings back the searcher's state but not the
scheduler's (it unpickles the scheduler as it was built), so the reference is
also written to ``state_file`` whenever it changes and read back from there:
a resumed search keeps stopping against the best it had before the crash.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from recemb.errors import ConfigError
from recemb.io import read_json_object, write_json
from recemb.tune.noise import trails
from recemb.tune.trial import PROGRESS

Curve = dict[int, float]  # rung (percent of epochs) -> score at the first report at or past it


class TrailingBest(FIFOScheduler):
    """Ray Tune scheduler: stop a trial at a rung where it trails the best completed trial beyond noise.

    Args:
        rungs: percents of a trial's epochs to compare at (below 100; later reports are not judged).
        margin: how many standard errors a trial may trail by (recemb.tune.config ``stop_margin``).
        metric: the reported score (maximised); ``queries_key``: the report's count of scored queries.
        state_file: where the reference is kept across a restore (module doc); None: in memory only.
    """

    def __init__(
        self,
        rungs: list[int],
        margin: float,
        metric: str,
        queries_key: str = "scored_rows",
        state_file: str | Path | None = None,
    ):
        super().__init__()
        self._rungs = sorted(r for r in rungs if r < 100)
        self._margin = margin
        self._score_key = metric
        self._queries_key = queries_key
        self._state_file = Path(state_file) if state_file is not None else None
        self._curves: dict[str, Curve] = {}  # trial id -> its rung scores so far
        self._best: tuple[float, Curve] | None = None  # (final score, rung scores) of the best completed trial
        self._loaded = False  # the state file is read on first use, in the restored driver

    def _reference(self) -> tuple[float, Curve] | None:
        """The best completed trial's (score, curve), read from ``state_file`` once if it is not in memory."""
        if not self._loaded:
            self._loaded = True
            if self._best is None and self._state_file is not None and self._state_file.is_file():
                state = read_json_object(self._state_file, ConfigError, "start the search afresh (recemb tune --fresh)")
                self._best = (float(state["score"]), {int(r): float(v) for r, v in state["curve"].items()})
        return self._best

    def _record(self, trial_id: str, result: dict[str, Any]) -> int | None:
        """Store the result's score at the highest rung it reached first; return that rung (None: none)."""
        progress, score = result.get(PROGRESS), result.get(self._score_key)
        if progress is None or score is None:
            return None
        curve = self._curves.setdefault(trial_id, {})
        reached = [r for r in self._rungs if r <= progress and r not in curve]
        for rung in reached:
            curve[rung] = float(score)
        return reached[-1] if reached else None

    def judge(self, trial_id: str, result: dict[str, Any]) -> str:
        """CONTINUE or STOP for one report (the Ray-free part of ``on_trial_result``)."""
        rung = self._record(trial_id, result)
        if result.get(PROGRESS, 0) >= 100:  # its last report: stopping saves nothing
            return TrialScheduler.CONTINUE
        best = self._reference()
        if rung is None or best is None or rung not in best[1]:
            return TrialScheduler.CONTINUE
        queries = int(result.get(self._queries_key) or 0)
        if trails(float(result[self._score_key]), best[1][rung], queries, self._margin):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def complete(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """A trial ended: if it ran all its epochs and beats the best, its curve becomes the reference."""
        curve = self._curves.pop(trial_id, {})
        if not result or result.get("epoch") != result.get("epochs") or self._score_key not in result:
            return
        score = float(result[self._score_key])
        best = self._reference()
        if math.isfinite(score) and (best is None or score > best[0]):
            self._best = (score, curve)
            if self._state_file is not None:
                write_json(self._state_file, {"score": score, "curve": curve})

    # ----------------------------------------------------------------- Ray Tune's side
    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self.judge(trial.trial_id, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.complete(trial.trial_id, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        # A trial removed while pending or paused (Ray Tune calls on_trial_complete for running ones).
        self._curves.pop(trial.trial_id, None)
