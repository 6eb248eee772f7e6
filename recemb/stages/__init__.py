"""Pipeline stages, one module each, and the model registry.

``recemb pipeline`` (recemb.pipeline) orders them and keeps their
fingerprints; the CLI and ``jobs/`` call the same stage functions. Each
module imports its heavy libraries inside the stage function, so importing
this package (every CLI start) stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from recemb.stages import candidates, data, evaluate, export, report, train
from recemb.stages.base import Stage

__all__ = ["STAGES", "Stage"]

# Default order: data, one training stage per registered model, then the stages that read them.
STAGES: Mapping[str, Stage] = MappingProxyType(
    {s.name: s for s in (data.STAGE, *train.STAGES, export.STAGE, candidates.STAGE, evaluate.STAGE, report.STAGE)}
)
