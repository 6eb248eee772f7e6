"""The ``serve:`` section of the pipeline YAML: one frozen config for both runners.

Example (``configs/quickstart.yaml``)::

    serve:
      port: 8000
      models: [covisit, sequence]   # sources under <run>/index/ (indexes, co-visitation); empty = all
      k_max: 100
      fallback: popularity   # or "404": unknown user/items get a 404
      replicas: 2            # Ray Serve only
      num_cpus: 0.5          # per replica (fractional on small machines)

The admin reload endpoint is off unless ``admin_token`` is set (in the YAML,
with ``--set serve.admin_token=...``, or through ``$RECEMB_ADMIN_TOKEN``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from recemb.data.repeats import ExcludeSeen
from recemb.errors import ConfigError
from recemb.section import Section

ADMIN_TOKEN_ENV = "RECEMB_ADMIN_TOKEN"


class UserTowerServeConfig(Section):
    """The model that encodes request histories, and the batching of its queries.

    ``two_tower``: ``<run>/two_tower/user_tower/``; ``sequence``: ``<run>/sequence/``
    (its query vector is the explore path; with ``exclude_seen`` the repeat path has
    nothing to add). Nothing is loaded when the run lacks the model's directory.
    """

    enabled: bool = True
    model: Literal["two_tower", "sequence"] = "two_tower"
    max_batch_size: int = Field(32, ge=1, le=4096)
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)  # how long a request waits for others to join its batch
    source: str | None = None  # the index its query vectors search; default: the model's own


class ServeConfig(Section):
    """Online retrieval service (serving/): HTTP bind, bounds, fallback, Ray Serve scaling."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0 = any free port
    run_dir: str | None = None  # default: the pipeline's <run.dir>/<run.name>
    prepared_dir: str | None = None  # events for the popularity fallback; default <run>/data
    models: list[str] = Field(default_factory=list)  # <run>/index/<model>; empty = every one
    query: Literal["last", "mean", "mean_last_n", "recency"] = "mean_last_n"
    last_n: int = Field(5, ge=1)
    quotas: dict[str, float] | None = None  # default blend: {source: count or fraction of k}
    weights: dict[str, float] | None = None  # {source: weight}: reciprocal-rank fusion instead of quotas
    exclude_seen: ExcludeSeen = "auto"  # drop the request's items; auto: by the events' repeat share
    k_default: int = Field(10, ge=1)
    k_max: int = Field(100, ge=1, le=10_000)
    max_history: int = Field(200, ge=1, le=100_000)  # recent items per request
    max_exclude: int = Field(1000, ge=0, le=100_000)
    max_id_length: int = Field(256, ge=1, le=4096)
    fallback: Literal["popularity", "404"] = "popularity"
    verify_checksums: bool = True  # sha256 of every index file at (re)load
    admin_token: str | None = Field(default=None, repr=False)
    access_log: bool = False
    # Ray Serve
    app_name: str = "recemb"
    route_prefix: str = "/"
    replicas: int = Field(1, ge=1)
    max_replicas: int | None = Field(None, ge=1)  # set: autoscale between replicas and this
    num_cpus: float = Field(0.5, gt=0)  # per replica
    max_ongoing_requests: int = Field(64, ge=1)
    user_tower: UserTowerServeConfig = UserTowerServeConfig()

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if self.k_default > self.k_max:
            raise ValueError(f"k_default ({self.k_default}) must be <= k_max ({self.k_max})")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= replicas ({self.replicas})")
        return self

    @property
    def run_path(self) -> Path:
        if self.run_dir is None:
            raise ConfigError(
                "serve.run_dir is not set; resolve the settings with serve_settings(serve, run_dir, prepared_dir)"
            )
        return Path(self.run_dir)

    @property
    def prepared_path(self) -> Path:
        return Path(self.prepared_dir) if self.prepared_dir else self.run_path / "data"

    def token(self) -> str | None:
        """The admin token (config first, then ``$RECEMB_ADMIN_TOKEN``); None = admin endpoints off."""
        return self.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None


def serve_settings(serve: ServeConfig | None, run_dir: str | Path, prepared_dir: str | Path) -> ServeConfig:
    """``serve`` (default ``ServeConfig()``) with its unset run_dir / prepared_dir filled in from the run's."""
    serve = serve or ServeConfig()
    update = {}
    if serve.run_dir is None:
        update["run_dir"] = str(run_dir)
    if serve.prepared_dir is None:
        update["prepared_dir"] = str(prepared_dir)
    return serve.model_copy(update=update) if update else serve
