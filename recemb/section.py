"""``Section``: the base of every config section (a leaf module: pydantic only).

Each package owns its section (``recemb/data/config.py``, ``recemb/eval/config.py``,
``recemb/models/item2vec/config.py``, ...); :mod:`recemb.config` assembles them
into the pipeline config. Library code imports its own section, never the
assembled config, so configuration flows down the layers without import cycles.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A frozen pydantic model that rejects unknown keys.

    ``extra="forbid"`` turns a misspelt YAML key into an error that names it,
    instead of a silently ignored setting; ``frozen=True`` makes a resolved
    config safe to share and hash into stage fingerprints.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """JSON-ready dict of a config (a section or the whole pipeline config), for manifests."""
    return cfg.model_dump(mode="json")
