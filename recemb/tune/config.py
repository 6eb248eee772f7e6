"""The ``tune:`` section of a pipeline config (what ``recemb tune`` searches, and how)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from recemb.section import Section

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(text: str | float | int | None) -> float | None:
    """``"20m"`` / ``"90s"`` / ``"1.5h"`` / ``600`` -> seconds; None stays None (no limit)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a duration like '90s', '20m' or '1h'")
        seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if seconds <= 0:
        raise ValueError(f"a time budget must be positive, got {text!r}")
    return seconds


class TuneConfig(Section):
    """``tune:``: search settings (recemb.tune). Every trial reads the validation split only."""

    # Models to tune; empty: every base model in eval.models that declares a search space.
    models: list[str] = Field(default_factory=list)
    trials: int = Field(20, ge=1)  # trials per model (the first one is the configured setting)
    # The whole search (a default search ends within 15 minutes); None: no limit. Models are searched cheapest
    # first, each given a share of what is left by the cost of its configured trial (recemb.tune.search), so
    # time a model does not use goes to the next ones.
    time_budget: str | float | None = "12m"
    protocol: Literal["auto", "ml", "sess", "imp"] = "auto"  # auto: the first of eval.protocols among these
    metric: str | None = None  # selection metric; default recemb.eval.validation.SELECTION_METRICS[protocol]
    # hybrid (default): random draws in the first `explore` share of the trials and time, then the local walk
    # from the best of them and the configured setting: the draws get out of a poor start (a new dataset on
    # the library's defaults), the walk refines a good one. random: draws only. local: steps from the
    # configured setting only (recemb.tune.local), ending at a local optimum. tpe: Optuna's TPE (pip install
    # optuna). From the library's defaults on ML-100K (15 minutes, test Recall@20 over 3 training seeds)
    # hybrid lifted item2vec 0.101 -> 0.185 and the sequence model 0.214 -> 0.238; random lifted item2vec
    # alike and kept the others (docs/tuning.md).
    searcher: Literal["hybrid", "local", "random", "tpe"] = "hybrid"
    explore: float = Field(0.5, ge=0, le=1)  # hybrid: the share of trials and time given to random draws
    # Early stopping. Trials are compared at equal shares of their own epochs (their learning-rate schedules
    # are at the same point then), at rungs grace, grace*rf, ... of 1. asha: keep the best 1/rf at each rung.
    # trailing: stop a trial that trails the best completed trial at the same rung by more than stop_margin
    # standard errors (recemb.tune.stopping). auto: trailing for the local searcher, whose steps score close
    # to each other, and the hybrid, asha for random and TPE draws. fifo: no early stopping.
    scheduler: Literal["auto", "asha", "trailing", "fifo"] = "auto"
    grace: float = Field(0.1, gt=0, le=1)  # no trial is stopped before this share of its epochs
    reduction_factor: int = Field(3, ge=2)  # ASHA: keep the best 1/rf at each rung; both: the rungs' spacing
    stop_margin: float = Field(1.0, ge=0)  # trailing: standard errors a trial may trail the best by
    # best.yaml keeps the configured setting unless the best trial beats it by more than this many standard
    # errors of its validation score (recemb.tune.noise); 0: the best always wins
    min_gain: float = Field(1.0, ge=0)
    cpus_per_trial: float = Field(1.0, gt=0)  # Ray resource; also the trial's compute threads (floor, >= 1)
    gpus_per_trial: float = Field(0.0, ge=0)  # fractional GPUs per trial, where the cluster has them
    concurrent: int = Field(0, ge=0)  # trials at once; 0: as many as the cluster's CPUs allow
    validation_fraction: float = Field(0.1, gt=0, lt=1)  # sess / imp: the latest share of train sessions / impressions
    max_failures: int = Field(1, ge=0)  # retries of a crashed trial
    seed: int = 0  # the searcher's seed
    # model -> {setting: dimension}: replaces (or adds to) the model's declared search space
    spaces: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)

    @field_validator("time_budget")
    @classmethod
    def _check_budget(cls, value: str | float | None) -> str | float | None:
        parse_duration(value)
        return value

    @property
    def stopping(self) -> Literal["asha", "trailing", "fifo"]:
        """The scheduler ``auto`` stands for with this searcher."""
        if self.scheduler == "auto":
            return "trailing" if self.searcher in ("local", "hybrid") else "asha"
        return self.scheduler

    @property
    def budget_seconds(self) -> float | None:
        return parse_duration(self.time_budget)
