"""Typed pipeline configuration: one YAML file, one section per stage.

A pipeline YAML looks like ``configs/quickstart.yaml``. Every section is a
frozen pydantic model with ``extra="forbid"``, so a misspelt key is an error
that names the file and the key, not a silently ignored setting. Values can be
overridden from the command line with ``--set section.key=value`` (the value
is parsed as YAML: ``--set data.synth.users=500``, ``--set eval.k=[10,20]``).
The resolved config is stored in every artifact's manifest.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from recemb.errors import ConfigError
from recemb.models.content.config import ContentConfig, ContentParts
from recemb.models.item2vec.config import Item2VecConfig
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.report.config import ReportConfig
from recemb.retrieval.candidates_config import CandidatesConfig
from recemb.retrieval.serve_config import ServeConfig
from recemb.train.ray_config import RayTrainConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(Section):
    name: str = "quickstart"
    dir: str = "runs"  # the run directory is <dir>/<name>

    @property
    def path(self) -> Path:
        return Path(self.dir) / self.name


class SynthConfig(Section):
    """The synthetic generator (recemb.data.synth): the embedded default dataset."""

    users: int = Field(2_000, ge=1)
    items: int = Field(1_000, ge=2)
    events: int = Field(200_000, ge=1)  # total behaviour events (approximate, +-1 session)
    topics: int = Field(20, ge=1)
    zipf_exponent: float = Field(1.0, ge=0)  # item popularity within a topic
    mean_session_length: float = Field(6.0, gt=1)
    topic_drift: float = Field(0.15, ge=0, le=1)  # chance that the next click changes topic
    repeat_prob: float = Field(0.05, ge=0, le=1)  # chance that the next click repeats an earlier item
    impressions: int = Field(2_000, ge=0)  # impression logs (each shows impression_size items)
    impression_size: int = Field(10, ge=2)
    images: bool = True  # write 64x64 PNGs per item
    image_size: int = Field(64, ge=8)
    chinese_fraction: float = Field(0.2, ge=0, le=1)  # share of items with Chinese titles/text
    start: str = "2024-01-01T00:00:00Z"
    days: int = Field(60, ge=1)
    seed: int = 0
    chunk_events: int = Field(1_000_000, ge=1_000)  # rows per Parquet write (bounds memory)


class TableSourceConfig(Section):
    """A generic CSV/Parquet source and its mapping onto canonical columns."""

    events: str
    items: str | None = None
    users: str | None = None
    impressions: str | None = None
    # canonical column -> source column, per table, e.g. {events: {user_id: userId}}
    columns: dict[str, dict[str, str]] = Field(default_factory=dict)
    separator: str = ","


class SessionizeConfig(Section):
    gap_minutes: float = Field(30.0, gt=0)  # inactivity gap when the source has no session id


class DataConfig(Section):
    source: Literal["synth", "movielens-100k", "ml-100k-content", "yoochoose", "mind", "table"] = "synth"
    path: str | None = None  # raw source directory; default: $RECEMB_DATA_DIR/<card's folder>
    prepared: str | None = None  # where canonical tables land; default: <run>/data
    synth: SynthConfig = SynthConfig()
    table: TableSourceConfig | None = None
    sessionize: SessionizeConfig = SessionizeConfig()
    min_count: int = Field(1, ge=1)  # items seen fewer times are dropped from vocabularies


class EvalConfig(Section):
    """Evaluation (recemb.eval): protocols of DESIGN.md §7 and baselines."""

    protocols: list[Literal["ml", "sess", "imp", "cold"]] = Field(default_factory=lambda: ["ml", "sess"])
    k: list[int] = Field(default_factory=lambda: [10, 20])  # cut-offs of ml, sess and cold
    imp_k: list[int] = Field(default_factory=lambda: [5, 10])  # nDCG@K / CTR@K of imp (MIND's)
    baselines: list[str] = Field(default_factory=lambda: ["popularity", "knn"])
    # recemb models fitted on each protocol's train split with their config section.
    models: list[
        Literal[
            "item2vec",
            "two_tower",
            "two_tower-text",
            "two_tower-image",
            "two_tower-both",
            "content",
            "content-text",
            "content-image",
            "content-both",
            "content-random",
        ]
    ] = Field(default_factory=list)
    # Protocols the content* and two_tower-* models run on. Content exists for cold
    # items, and each run fits item2vec plus the content alignment, the costly part.
    content_protocols: list[Literal["ml", "sess", "imp", "cold"]] = Field(default_factory=lambda: ["cold"])
    embeddings: dict[str, str] = Field(default_factory=dict)  # name -> EmbeddingSet directory to evaluate
    # Also evaluate every <run>/<model>/embeddings. Off by default: `recemb train`
    # fits on all events, test included, so those rows would be optimistic.
    run_embeddings: bool = False
    query: Literal["last", "mean", "mean_last_n", "recency"] = "mean_last_n"
    query_last_n: int = Field(5, ge=1)
    scoring: Literal["cosine", "dot"] = "cosine"
    cold_fraction: float = Field(0.15, gt=0, lt=1)
    # P-COLD on this many disjoint cold-item sets (one model fit each), pooled: more
    # cold targets, less noise. ML-100K has ~70 cold test targets per 15% fold.
    cold_folds: int = Field(1, ge=1)
    # P-IMP: refit popularity on a rolling origin (a polars duration; null = fit once).
    # News popularity lives for hours: frozen counts score AUC ~0.51 on MIND, hourly ~0.54.
    imp_popularity_refit: str | None = "1h"
    batch_size: int = Field(4096, ge=1)
    seed: int = 0

    @pydantic.model_validator(mode="after")
    def _folds_fit(self) -> EvalConfig:
        if self.cold_folds * self.cold_fraction > 1 + 1e-9:
            raise ValueError(
                f"eval.cold_folds x eval.cold_fraction = {self.cold_folds} x {self.cold_fraction} > 1: "
                "the folds' cold items must be disjoint; lower one of them"
            )
        return self


class ExportConfig(Section):
    """Annoy export of the run's EmbeddingSets (recemb.index.export)."""

    n_trees: int = Field(50, ge=1)
    metric: Literal["cosine", "dot", "euclidean"] | None = None  # None: the EmbeddingSet's own
    search_k: int = -1  # default search_k stored in the manifest (-1: annoy's n_trees * k)
    sample: int = Field(1000, ge=0)  # items whose recall@10 against exact search is measured
    # Which EmbeddingSets: names of <run>/<name>/embeddings; empty = every one in the run.
    models: list[str] = Field(default_factory=list)


class PipelineConfig(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    item2vec: Item2VecConfig = Item2VecConfig()
    two_tower: TwoTowerConfig = TwoTowerConfig()
    content: ContentConfig = ContentConfig()
    ray: RayTrainConfig = RayTrainConfig()  # how training stages run: in-process or Ray Train workers
    export: ExportConfig = ExportConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    serve: ServeConfig = ServeConfig()
    report: ReportConfig = ReportConfig()
    # Stages that `recemb pipeline` runs, in order, when they exist.
    stages: list[str] = Field(default_factory=lambda: ["data", "evaluate"])

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def prepared_dir(self) -> Path:
        return Path(self.data.prepared) if self.data.prepared else self.run_dir / "data"

    def content_cache_dir(self, parts: ContentParts | None = None) -> Path:
        """Where frozen image / sentence features are cached: ``parts.cache_dir``, else ``<run>/cache``."""
        parts = parts or self.content
        return Path(parts.cache_dir) if parts.cache_dir else self.run_dir / "cache"


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set {dotted!r}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]`` (values parsed as YAML)."""
    out = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set eval.seed=1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        out.append((key.strip(), value))
    return out


def _explain(e: pydantic.ValidationError, source: str) -> ConfigError:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r} (check the spelling; see configs/quickstart.yaml for the keys)")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines))


def build_config(
    tree: dict[str, Any] | None, overrides: list[str] | None = None, source: str = "<config>"
) -> PipelineConfig:
    """Validate a config tree (plus ``--set`` overrides) into a :class:`PipelineConfig`."""
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    tree = copy.deepcopy(tree or {})
    for key, value in parse_overrides(overrides):
        _set_path(tree, key, value, source)
    try:
        return PipelineConfig.model_validate(tree)
    except pydantic.ValidationError as e:
        raise _explain(e, source) from None


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file; the shipped ones are in configs/")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run:, data:, eval:)")
    return build_config(tree, overrides, str(path))


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """JSON-ready dict of a config, for manifests."""
    return cfg.model_dump(mode="json")
