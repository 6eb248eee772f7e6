"""Local search from the configured setting: one setting changed at a time, moving to whatever scores better.

Why a third searcher beside random and TPE: on 2 cores a search affords 10-30
trials a model, and the configured setting is usually a sensible one. Random
draws from a space wide enough to matter mostly land far below it (ML-100K,
stop 25: 14 of 16 item2vec draws scored under half the configured setting's
validation NDCG@10), and TPE needs ~10 random draws before it models anything.
A step from a good setting is rarely far worse, and every completed trial
says something about the neighbourhood. (Steps score close to each other, so
they are stopped early only when they trail the best completed trial beyond
noise, recemb.tune.stopping, not ranked by ASHA.)

The walk (a first-improvement coordinate search, a pattern search without
step shrinking):

1. the configured setting (the first trial, as with every searcher);
2. every *neighbour* of the best completed setting so far, one at a time:
   one dimension moved one step (:func:`neighbours`), the others kept;
3. whenever a completed trial beats the best, it becomes the centre and its
   untried neighbours are queued, the step that just paid first (a step that
   helped once often helps again);
4. when every neighbour of the best was tried and none was better (a local
   optimum), the search ends: ``Searcher.FINISHED``, and the driver hands the
   time left to the next model. So it does when no step left would end
   within the model's share of the time budget (its cost estimated from
   the configured trial's, scaled by epochs).

A step is x2 / /2 on a log-scaled or positive integer dimension, a quarter of
the range on a uniform one, and the adjacent value of a ``choice`` (in its
declared order, so ``window: [1, 2, 3, 5, 10, 20, 0]`` steps 20 -> 0, the whole
session). Only completed trials can become the centre: a trial stopped
early was scored on a partial schedule.

**Hybrid** (``tune.searcher: hybrid``, ``random_draws`` > 0): after the
configured setting and before walking, up to ``random_draws`` settings are
drawn from the whole space, within the first ``explore_share`` of the time
budget. The walk then starts from the best completed trial, configured or
drawn. Random draws reach a good region from a poor start (a new dataset on
the library's defaults); the walk refines a start that is already good (a
config tuned by hand), where draws seldom come close (docs/tuning.md).
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

from ray.tune.search import Searcher

from recemb.tune.space import Space, contains, sample

Move = tuple[str, int]  # (setting, direction: +1 up / -1 down)


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _round(value: float) -> float:
    return float(f"{value:.6g}")  # 6 significant digits, as in best.yaml


def _step(kind: str, values: list, current: Any, direction: int) -> Any:
    """The value one step from ``current`` in ``direction`` (None: no such step inside the dimension)."""
    if kind == "choice":
        if current in values:
            i = values.index(current) + direction
            return values[i] if 0 <= i < len(values) else None
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*values, current])
        if not numeric:  # a configured value outside a categorical dimension: the first choice
            return values[0] if direction > 0 else None
        side = [v for v in values if (v - current) * direction > 0]
        return min(side, key=lambda v: abs(v - current)) if side else None
    if not isinstance(current, (int, float)) or isinstance(current, bool):
        return None
    lo, hi = values
    integer = kind.endswith("randint")
    if kind.startswith("log") or (integer and lo > 0):
        new = current * 2.0 if direction > 0 else current / 2.0
    else:
        new = current + direction * (hi - lo) / 4.0
    new = min(max(new, lo), hi)
    if integer:
        new = int(round(new))
        if new == current:  # 1 / 2 rounds back to 1: take the smallest step instead
            new = int(min(max(current + direction, lo), hi))
    else:
        new = _round(new)
    return None if new == current else new


def neighbours(space: Space, point: dict[str, Any], first: Move | None = None) -> list[tuple[dict[str, Any], Move]]:
    """Every setting one step from ``point`` along one dimension of ``space``, with the step taken.

    Ordered by the space's declared order (models declare their most telling
    settings first), down before up; before them the steps along dimensions
    where ``point`` lies outside the range (a space narrowed on purpose: the
    step into it comes first), and before everything the step ``first``.
    """
    out: list[tuple[dict[str, Any], Move, bool]] = []
    for name, dim in space.items():
        kind, values = next(iter(dim.items()))
        inside = contains({name: dim}, {name: point.get(name)})
        for direction in (-1, 1):
            value = _step(kind, list(values), point.get(name), direction)
            if value is not None:
                out.append(({**point, name: value}, (name, direction), inside))
    out.sort(key=lambda row: (row[1] != first, row[2]))  # stable: the rest keep their order
    return [(params, move) for params, move, _ in out]


class LocalSearch(Searcher):
    """Ray Tune searcher for the walk of the module doc. ``space`` holds the drawn dimensions only.

    Its state (tried settings and their scores, the queue, trials in flight)
    is saved as JSON with the experiment, so an interrupted search resumes
    where it stopped.
    """

    def __init__(
        self,
        space: Space,
        start: dict[str, Any],
        metric: str,
        mode: str = "max",
        trial_seconds: float | None = None,
        budget_seconds: float | None = None,
        random_draws: int = 0,
        explore_share: float = 0.5,
        seed: int = 0,
    ):
        """``trial_seconds``: what the ``start`` trial costs; with ``budget_seconds`` (counted from the
        first suggestion) no trial is started that would not end in time (a trial cut short by the
        budget cannot be chosen, and its time is lost to the models searched after this one).
        ``random_draws``, ``explore_share``, ``seed``: the hybrid's draws before the walk (module doc)."""
        super().__init__(metric=metric, mode=mode)
        self._space = space
        self._start = dict(start)
        self._trial_seconds = trial_seconds
        self._budget_seconds = budget_seconds
        self._deadline: float | None = None
        self._sign = 1.0 if mode == "max" else -1.0
        self._random_draws = random_draws
        self._explore_share = explore_share
        self._seed = seed
        self._explore_until: float | None = None
        self._drawn = 0  # draws started
        self._attempts = 0  # draws made (some are skipped): the n-th draw is the same after a resume
        self._walking = random_draws == 0
        self._scores: dict[str, float] = {}  # every finished trial: its score (-inf: stopped early or failed)
        self._points: dict[str, dict[str, Any]] = {}  # key -> {"params", "move"} of every finished trial
        self._pending: dict[str, dict[str, Any]] = {}  # trial id -> {"params", "move"}
        # The start and its neighbours from the outset: the second worker need not wait for the start's score.
        self._queue: list[tuple[dict[str, Any], Move | None]] = [(self._start, None)]
        if self._walking:
            self._queue += neighbours(space, start)
        self._centre = _key(self._start)  # the setting whose neighbours are queued

    # ----------------------------------------------------------------- Ray Tune's side
    def _fits(self, params: dict[str, Any]) -> bool:
        """Would a trial of ``params`` started now end before the budget does? (epochs scale its cost)"""
        if self._deadline is None or self._trial_seconds is None or params == self._start:
            return True
        seconds = self._trial_seconds
        epochs, start_epochs = params.get("epochs"), self._start.get("epochs")
        if isinstance(epochs, (int, float)) and isinstance(start_epochs, (int, float)) and start_epochs > 0:
            seconds *= epochs / start_epochs
        return time.time() + seconds <= self._deadline

    def _draw(self, busy: set[str]) -> dict[str, Any] | None:
        """A random setting not tried yet that ends in time (None: 20 draws in a row did not)."""
        for _ in range(20):
            params = sample(self._space, random.Random(f"{self._seed}:{self._attempts}"))
            self._attempts += 1
            key = _key(params)
            if key not in self._scores and key not in busy and self._fits(params):
                return params
        return None

    def _start_walking(self) -> None:
        """End the draws: queue the steps from the best completed setting so far."""
        self._walking = True
        centre = self._points.get(self._centre, {"params": self._start, "move": None})
        self._queue = list(neighbours(self._space, centre["params"]))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._deadline is None and self._budget_seconds is not None:
            self._deadline = time.time() + self._budget_seconds
            self._explore_until = time.time() + self._explore_share * self._budget_seconds
        busy = {_key(p["params"]) for p in self._pending.values()}
        if not self._walking and not self._queue:  # the start is out: draw, while draws and time are left
            late = self._explore_until is not None and time.time() >= self._explore_until
            params = None if late or self._drawn >= self._random_draws else self._draw(busy)
            if params is not None:
                self._drawn += 1
                self._pending[trial_id] = {"params": params, "move": None}
                return dict(params)
            self._start_walking()
        while self._queue:
            params, move = self._queue.pop(0)
            key = _key(params)
            if key in self._scores or key in busy or not self._fits(params):
                continue
            self._pending[trial_id] = {"params": params, "move": move}
            return dict(params)
        # Nothing left to try around the best: wait for the trials in flight (one may move the centre).
        # (Ray Tune's FINISHED is a string its own annotation of ``suggest`` leaves out.)
        return None if self._pending else Searcher.FINISHED  # type: ignore[return-value]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        entry = self._pending.pop(trial_id, None)
        if entry is None:
            return
        score = -math.inf
        if not error and result is not None and result.get("epoch") == result.get("epochs") and self.metric in result:
            score = float(result[self.metric]) * self._sign  # only a trial that ran all its epochs counts
        key = _key(entry["params"])
        self._scores[key] = score if math.isfinite(score) else -math.inf
        self._points[key] = entry
        if self._centre in {_key(p["params"]) for p in self._pending.values()}:
            return  # the centre's own score is not in yet: nothing to compare with
        best = max(self._scores, key=lambda k: self._scores[k])
        if best != self._centre and self._scores[best] > self._scores.get(self._centre, -math.inf):
            self._centre = best
            if not self._walking:
                return  # the walk starts from the centre when the draws end
            move = self._points[best]["move"]
            steps = neighbours(self._space, self._points[best]["params"], first=tuple(move) if move else None)
            self._queue = [(params, step) for params, step in steps]

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is ours (``space``); Ray's copy of it is only its sampler form

    # ----------------------------------------------------------------- resume
    def get_state(self) -> dict[str, Any]:
        return {
            "scores": {k: (v if math.isfinite(v) else None) for k, v in self._scores.items()},
            "points": self._points,
            "pending": self._pending,
            "queue": [[p, m] for p, m in self._queue],
            "centre": self._centre,
            "drawn": self._drawn,
            "attempts": self._attempts,
            "walking": self._walking,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._scores = {k: (-math.inf if v is None else float(v)) for k, v in state["scores"].items()}
        self._points = state["points"]
        self._pending = state["pending"]
        self._queue = [(p, tuple(m) if m else None) for p, m in state["queue"]]
        self._centre = state["centre"]
        self._drawn = state.get("drawn", 0)
        self._attempts = state.get("attempts", 0)
        self._walking = state.get("walking", True)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))
