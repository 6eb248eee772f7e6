"""One training stage per registered model: ``<run>/<model>/`` from all prepared events."""

from __future__ import annotations

from typing import Any

from recemb.config import PipelineConfig
from recemb.stages.base import Stage
from recemb.stages.registry import MODELS, ModelSpec


def train_model(cfg: PipelineConfig, name: str) -> dict[str, Any]:
    """Train registered model ``name`` with ``cfg``; return the stage summary."""
    return {"dir": str(MODELS[name].train(cfg))}


def training_stage(spec: ModelSpec) -> Stage:
    """The pipeline stage of ``spec``: its section and the sections it reads decide its output."""

    def run(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
        return train_model(cfg, spec.name)

    return Stage(spec.name, run, (spec.section, *spec.reads), f"train {spec.name}: {spec.summary}")


STAGES = tuple(training_stage(spec) for spec in MODELS.values())
